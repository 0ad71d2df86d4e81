"""pFedSAM and FedSAM (fedseg.algorithms.pfedsam / fedsam) on the engine with the tiny SAM: what
travels, what stays, what never changes, the KD term, and pFedSAM without experts = FedSAM."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import tensor_digest, tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.algorithms.base import Algorithm, ClientContext
from fedseg.algorithms.pfedsam import PFedSAM, distillation_loss
from fedseg.config import config_from_dict
from fedseg.engine import wire
from fedseg.engine.rundir import read_metrics
from fedseg.models.sam import SAM, is_lora_key, is_moe_key
from fedseg.runtime.model_init import init_model
from fedseg.runtime.common import DataSpec
from fedseg.runtime.sim import run_inprocess
from fedseg.types import Broadcast, ClientUpdate

SPEC = DataSpec(spatial_dims=2, in_channels=1, num_classes=2)


@dataclass
class SpyPFedSAM(PFedSAM):
    """pFedSAM recording the frozen weights' hash after every client's training."""

    digests: list[str] = field(default_factory=list)

    def on_round_end(self, model: nn.Module, ctx: ClientContext) -> None:
        super().on_round_end(model, ctx)
        sd = model.state_dict()
        self.digests.append(tensor_digest({k: sd[k] for k in self.frozen_keys(model)}))


def _keys_anywhere(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return {k for k in obj if isinstance(k, str)} | {k for v in obj.values() for k in _keys_anywhere(v)}
    if isinstance(obj, (list, tuple)):
        return {k for v in obj for k in _keys_anywhere(v)}
    return set()


def _run(alg: Algorithm, cfg: dict[str, Any], run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[Any]]:
    import fedseg.runtime.sim as sim

    sent: list[Any] = []
    original = wire.encode

    def spy(message: Any) -> bytes:
        sent.append(message)
        return original(message)

    monkeypatch.setattr(wire, "encode", spy)
    monkeypatch.setattr(sim, "build_algorithm", lambda spec: alg)
    result = run_inprocess(config_from_dict(cfg), run_dir, write_report=False)
    return result, sent


def test_frozen_encoder_and_experts_never_travel_only_lora_and_decoder_do(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    alg = SpyPFedSAM()
    cfg = tiny_config("pfedsam", rounds=2, train={"optimizer_state": "persist"})
    _, sent = _run(alg, cfg, tmp_path / "run", monkeypatch)
    model, init, _ = init_model(config_from_dict(cfg), SPEC, torch.device("cpu"))
    assert isinstance(model, SAM)
    frozen, local = alg.frozen_keys(model), alg.local_keys(model)
    shared = {k for k in model.state_dict() if is_lora_key(k) or k.startswith("mask_decoder.")}
    assert frozen and local and shared and not (frozen & local)
    assert frozen | local | shared == set(model.state_dict())
    # the frozen encoders hash as the initial model after every client's training, in both rounds
    assert len(alg.digests) == 4 and set(alg.digests) == {tensor_digest({k: init[k] for k in frozen})}
    updates = [m for m in sent if isinstance(m, ClientUpdate)]
    broadcasts = [m for m in sent if isinstance(m, Broadcast)]
    assert len(updates) == 4 and broadcasts
    for message in updates + broadcasts:
        assert set(message.params) <= shared and not (set(message.extras) & (frozen | local))
    assert all(set(u.params) == shared for u in updates)  # exactly LoRA + decoder go up
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert not frozen & set(ckpt["global_params"]) and not frozen & _keys_anywhere(ckpt["client_states"])
    assert local <= _keys_anywhere(ckpt["client_states"])  # the experts stay on each client
    for per_round in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        assert not frozen & _keys_anywhere(torch.load(per_round, weights_only=False)), per_round.name
    # the experts trained (they left their zero-output init) and differ between the two clients
    states = ckpt["client_states"]["memory"]
    up = "image_encoder.blocks.0.moe.experts.0.up.weight"
    mine = [s["local_params"][up] for s in states.values()]
    assert not torch.equal(mine[0], init[up]) and not torch.equal(mine[0], mine[1])


def test_kd_term_is_zero_when_logits_match_and_scales_with_tau_squared() -> None:
    logits = torch.randn(2, 2, 4, 4)
    assert float(distillation_loss(logits, logits.clone(), tau=2.0)) == pytest.approx(0.0, abs=1e-7)
    other = torch.randn(2, 2, 4, 4)
    p_t, log_s = torch.softmax(other / 3.0, 1), torch.log_softmax(logits / 3.0, 1)
    want = (p_t * (torch.log(p_t) - log_s)).sum(1).mean() * 9.0
    torch.testing.assert_close(distillation_loss(logits, other, tau=3.0), want)
    assert float(distillation_loss(logits, other, tau=3.0)) > 0


def test_pfedsam_without_experts_and_kd_is_fedsam_bit_for_bit(tmp_path: Path) -> None:
    def run(algorithm: dict[str, Any], name: str) -> Any:
        cfg = tiny_config(algorithm, rounds=2)
        cfg["model"]["moe_experts"] = 0
        return run_inprocess(config_from_dict(cfg), tmp_path / name, write_report=False)

    a = run({"name": "pfedsam", "kd_weight": 0.0}, "p")
    b = run({"name": "fedsam"}, "f")
    assert a.global_params.keys() == b.global_params.keys()
    for key, value in a.global_params.items():
        assert torch.equal(b.global_params[key], value), key


@pytest.mark.parametrize("algorithm", [{"name": "pfedsam", "kd_direction": "local_to_global"}, {"name": "local"}])
def test_other_variants_run_on_the_tiny_sam(tmp_path: Path, algorithm: dict[str, Any]) -> None:
    cfg = tiny_config("pfedsam", rounds=1)
    cfg["algorithm"] = algorithm
    run_inprocess(config_from_dict(cfg), tmp_path / "r", write_report=False)
    evals = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if r.get("kind") == "eval"]
    assert {r["site"] for r in evals if r["model"] == "personal" and r.get("split") == "test"} >= {"site0", "site1"}
    assert all(r["dice"] == r["dice"] for r in evals)  # no NaN: the models trained and evaluated


def test_bytes_per_round_follow_the_shared_parameter_count(tmp_path: Path) -> None:
    """Check 6: per round, up = K |theta_g| * 4 bytes and down the same, up to message framing (a
    key and header per tensor: large for the tiny model's many small tensors)."""
    cfg = tiny_config("pfedsam", rounds=1)
    run_inprocess(config_from_dict(cfg), tmp_path / "b", write_report=False)
    model, _, _ = init_model(config_from_dict(cfg), SPEC, torch.device("cpu"))
    alg = build_algorithm({"name": "pfedsam"})
    theta = sum(v.numel() for k, v in model.state_dict().items() if k in alg.shared_keys(model))
    tensors = len(alg.shared_keys(model))
    (row,) = [r for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if r.get("kind") == "round"]
    for direction in ("bytes_up", "bytes_down"):
        assert 2 * theta * 4 <= row[direction] <= 2 * (theta * 4 + 200 * tensors), (direction, row[direction], theta)
    assert not any(is_moe_key(k) for k in alg.shared_keys(model))


def test_fedsam_names_the_model_it_needs() -> None:
    model = nn.Linear(2, 2)
    for name in ("fedsam", "pfedsam"):
        with pytest.raises(ValueError, match="model.name: sam"):
            build_algorithm({"name": name}).frozen_keys(model)
    with pytest.raises(ValueError, match="tau > 0"):
        build_algorithm({"name": "pfedsam", "tau": 0.0})


def test_the_busbra_preset_builds_the_model_and_algorithm() -> None:
    import yaml

    preset = Path(__file__).resolve().parents[2] / "configs" / "pfedsam" / "busbra_tiny.yaml"
    cfg = config_from_dict(yaml.safe_load(preset.read_text()))
    model, _, _ = init_model(cfg, SPEC, torch.device("cpu"))
    alg = build_algorithm(dict(cfg.algorithm))
    assert isinstance(model, SAM) and isinstance(alg, PFedSAM) and alg.local_keys(model)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
