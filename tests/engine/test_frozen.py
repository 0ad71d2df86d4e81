"""Frozen parameters (``Algorithm.frozen_keys``): never trained, never sent, never stored in client
state or checkpoints; every process rebuilds them from the initial model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import tensor_digest, tiny_config
from fedseg.algorithms.base import Algorithm, ClientContext, module_keys, norm_layer_keys
from fedseg.config import config_from_dict
from fedseg.engine import wire
from fedseg.engine.frozen import FrozenKeyError, frozen_parameters
from fedseg.runtime.model_init import init_model
from fedseg.runtime.common import DataSpec
from fedseg.runtime.inference import load_trained_model
from fedseg.runtime.sim import run_inprocess
from fedseg.types import Broadcast, ClientUpdate

_FROZEN_MODULE = "model.0.conv"  # the first convolution of the tiny MONAI U-Net: a stand-in pretrained encoder


@dataclass
class FrozenEncoder(Algorithm):
    """A toy method with a frozen first convolution and FedBN-style local norm layers."""

    digests: list[str] = field(default_factory=list)  # test spy: in-process, the engine uses this object

    def frozen_keys(self, model: nn.Module) -> set[str]:
        return module_keys(model, [_FROZEN_MODULE])

    def local_keys(self, model: nn.Module) -> set[str]:
        return norm_layer_keys(model) | self.frozen_keys(model)  # frozen wins: not stored as local either

    def on_round_end(self, model: nn.Module, ctx: ClientContext) -> None:
        super().on_round_end(model, ctx)
        sd = model.state_dict()
        self.digests.append(tensor_digest({k: sd[k] for k in self.frozen_keys(model)}))  # right after training


def _run(alg: Algorithm, run_dir: Path, monkeypatch: pytest.MonkeyPatch, rounds: int = 2) -> list[Any]:
    """Run ``alg`` in-process; returns every message the engine encoded for the wire."""
    import fedseg.runtime.sim as sim

    sent: list[Any] = []
    original = wire.encode

    def spy(message: Any) -> bytes:
        sent.append(message)
        return original(message)

    monkeypatch.setattr(wire, "encode", spy)
    monkeypatch.setattr(sim, "build_algorithm", lambda spec: alg)
    run_inprocess(config_from_dict(tiny_config(rounds=rounds)), run_dir, write_report=False)
    return sent


def _keys_anywhere(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return {k for k in obj if isinstance(k, str)} | {k for v in obj.values() for k in _keys_anywhere(v)}
    if isinstance(obj, (list, tuple)):
        return {k for v in obj for k in _keys_anywhere(v)}
    return set()


def test_frozen_weights_are_never_trained_sent_stored_or_checkpointed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    alg = FrozenEncoder()
    run_dir = tmp_path / "run"
    sent = _run(alg, run_dir, monkeypatch)
    cfg = config_from_dict(tiny_config(rounds=2))
    model, init, _ = init_model(cfg, DataSpec(spatial_dims=2, in_channels=1, num_classes=2), torch.device("cpu"))
    frozen = alg.frozen_keys(model)
    assert frozen == {f"{_FROZEN_MODULE}.weight", f"{_FROZEN_MODULE}.bias"}

    # never trained: after every client's training in both rounds the frozen weights hash as the init
    assert len(alg.digests) == 4 and set(alg.digests) == {tensor_digest({k: init[k] for k in frozen})}
    # never sent, in either direction
    updates = [m for m in sent if isinstance(m, ClientUpdate)]
    broadcasts = [m for m in sent if isinstance(m, Broadcast)]
    assert len(updates) == 4 and broadcasts
    assert not any(frozen & (set(m.params) | set(m.extras)) for m in updates + broadcasts)
    assert all(m.params for m in updates)  # the rest still travels
    # never stored per client, never checkpointed
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert not frozen & set(ckpt["global_params"])
    assert not frozen & _keys_anywhere(ckpt["client_states"])
    assert any(k in _keys_anywhere(ckpt["client_states"]) for k in norm_layer_keys(model))  # local keys are kept
    # the global model trained; the loader rebuilds the frozen weights from the initial model
    assert not torch.equal(ckpt["global_params"]["model.2.conv.weight"], init["model.2.conv.weight"])
    loaded, _, _ = load_trained_model(run_dir)
    for key in frozen:
        assert torch.equal(loaded.state_dict()[key].cpu(), init[key])


@dataclass
class SendsFrozen(FrozenEncoder):
    def client_update(self, model: nn.Module, ctx: ClientContext, num_examples: int,
                      train_metrics: Any) -> ClientUpdate:
        update = super().client_update(model, ctx, num_examples, train_metrics)
        sd = model.state_dict()
        update.params.update({k: sd[k].detach().clone() for k in self.frozen_keys(model)})
        return update


@dataclass
class StoresFrozen(FrozenEncoder):
    def on_round_end(self, model: nn.Module, ctx: ClientContext) -> None:
        ctx.state["my_model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("alg", "match"), [(SendsFrozen(), "frozen keys in its update"),
                                            (StoresFrozen(), r"client state at state\['my_model'\]")])
def test_the_engine_refuses_a_frozen_key_in_an_update_or_client_state(
        alg: Algorithm, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FrozenKeyError, match=match):
        _run(alg, tmp_path / "r", monkeypatch, rounds=1)


def test_frozen_parameters_are_left_out_of_the_optimizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedseg.runtime.sim as sim

    alg = FrozenEncoder()
    monkeypatch.setattr(sim, "build_algorithm", lambda spec: alg)
    cfg = config_from_dict(tiny_config(rounds=1, train={"optimizer_state": "persist"}))
    run_inprocess(cfg, tmp_path / "p", write_report=False)
    ckpt = torch.load(tmp_path / "p" / "checkpoints" / "last.pt", weights_only=False)
    model, _, _ = init_model(cfg, DataSpec(spatial_dims=2, in_channels=1, num_classes=2), torch.device("cpu"))
    state = ckpt["client_states"]["memory"]["site0"]["optimizer"]
    assert len(state["param_groups"][0]["params"]) == len(list(model.parameters())) - 2
    # requires_grad is off only for the round, and only for the frozen parameters
    with frozen_parameters(model, alg.frozen_keys(model)):
        assert {n for n, p in model.named_parameters() if not p.requires_grad} == alg.frozen_keys(model)
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_keys_work_with_codecs_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedseg.runtime.sim as sim

    alg = FrozenEncoder()
    monkeypatch.setattr(sim, "build_algorithm", lambda spec: alg)
    codec = {"up": [{"name": "topk", "ratio": 0.5, "min_numel": 0}, {"name": "int8"}], "down": [{"name": "fp16"}]}
    run_inprocess(config_from_dict(tiny_config(rounds=2, codec=codec)), tmp_path / "c", write_report=False)
    assert len(set(alg.digests)) == 1
    ckpt = torch.load(tmp_path / "c" / "checkpoints" / "last.pt", weights_only=False)
    assert not alg.frozen_keys(load_trained_model(tmp_path / "c")[0]) & set(ckpt["global_params"])
