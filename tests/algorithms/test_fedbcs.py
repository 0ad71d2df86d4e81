"""FedBCS (CDPA), FPL and FedProto: FedAvg without prototypes, prototype messages, the loss schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.algorithms.base import Batch, ClientContext
from fedseg.algorithms.fedbcs import (
    FedBCS,
    FedProto,
    ProtoKey,
    pack_prototypes,
    prototype_mse_loss,
    unpack_prototypes,
)
from fedseg.config import config_from_dict
from fedseg.engine import wire
from fedseg.runtime.sim import run_inprocess
from fedseg.types import Broadcast, ClientUpdate

FUSION = 8
"""fusion_channels of the tiny fedbcs_unet (features [4, 8, 16]: two encoder stages, so E and D fuse one
stage each and have 8 channels; ``last`` has 4)."""


def _cfg(algorithm: dict[str, Any] | str, rounds: int = 2, fsr: bool = False) -> dict[str, Any]:
    cfg = tiny_config(algorithm, rounds=rounds, train={"optimizer_state": "persist"})
    cfg["model"] = {"name": "fedbcs_unet", "features": [4, 8, 16], "fsr": fsr, "fusion_channels": FUSION}
    return cfg


def _run(tmp_path: Path, name: str, cfg: dict[str, Any]) -> Any:
    return run_inprocess(config_from_dict(cfg), tmp_path / name, write_report=False)


def _assert_same(a: Any, b: Any) -> None:
    assert a.global_params.keys() == b.global_params.keys()
    for key, value in a.global_params.items():
        assert torch.equal(b.global_params[key], value), key


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ClientUpdate and Broadcast the engine encodes for the wire, in order."""
    sent: list[Any] = []
    original = wire.encode

    def spy(message: Any) -> bytes:
        sent.append(message)
        return original(message)

    monkeypatch.setattr(wire, "encode", spy)
    return sent


# ---------------------------------------------------------------------------------------------- check 1
def test_fedbcs_without_prototypes_and_fsr_is_fedavg_bit_for_bit(tmp_path: Path) -> None:
    avg = _run(tmp_path, "avg", _cfg("fedavg"))
    _assert_same(avg, _run(tmp_path, "off", _cfg({"name": "fedbcs", "levels": []})))


def test_fedbcs_round_one_has_no_prototype_loss_so_equals_fedavg(tmp_path: Path) -> None:
    """Round 1: features are tapped and prototypes collected, but nothing changes the weights."""
    _assert_same(_run(tmp_path, "avg", _cfg("fedavg", rounds=1)), _run(tmp_path, "bcs", _cfg("fedbcs", rounds=1)))


def test_fedbcs_with_prototypes_differs_from_fedavg_in_round_two(tmp_path: Path) -> None:
    avg, bcs = _run(tmp_path, "avg", _cfg("fedavg")), _run(tmp_path, "bcs", _cfg("fedbcs"))
    assert any(not torch.equal(bcs.global_params[k], v) for k, v in avg.global_params.items())


# ---------------------------------------------------------------------------------------------- messages
def test_only_prototypes_travel_as_extras_with_their_shapes(tmp_path: Path, messages: list[Any]) -> None:
    _run(tmp_path, "bcs", _cfg("fedbcs", fsr=True))
    updates = [m for m in messages if isinstance(m, ClientUpdate)]
    broadcasts = [m for m in messages if isinstance(m, Broadcast)]
    assert len(updates) == 4 and broadcasts
    for u in updates:
        assert u.extras and all(k.startswith(ProtoKey.LOCAL.value) for k in u.extras), sorted(u.extras)
        assert {tuple(t.shape) for t in u.extras.values()} == {(FUSION,)}
        assert set(unpack_prototypes(ProtoKey.LOCAL.value, u.extras)) == {"encoder", "decoder"}
        assert set(unpack_prototypes(ProtoKey.LOCAL.value, u.extras)["encoder"]) == {0, 1}  # background too
    round1 = [b for b in broadcasts if b.config.get("round") == 1]
    later = [b for b in broadcasts if b.config.get("round") == 2]
    assert round1 and all(not b.extras for b in round1)
    assert later
    for b in later:
        assert b.extras and all(k.startswith(ProtoKey.CLUSTER.value) for k in b.extras)
        for t in b.extras.values():
            assert t.ndim == 2 and t.shape[1] == FUSION and 1 <= t.shape[0] <= 2


# ---------------------------------------------------------------------------------------------- loss schedule
def test_prototype_loss_is_absent_in_round_one_and_positive_in_round_two(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, float | None]] = []
    original = FedBCS.extra_loss

    def spy(self: FedBCS, model: nn.Module, batch: Batch, logits: torch.Tensor,
            ctx: ClientContext) -> torch.Tensor | None:
        out = original(self, model, batch, logits, ctx)
        seen.append((ctx.round, None if out is None else float(out.detach())))
        return out

    monkeypatch.setattr(FedBCS, "extra_loss", spy)
    _run(tmp_path, "bcs", _cfg("fedbcs"))
    assert {v for r, v in seen if r == 1} == {None}
    round2 = [v for r, v in seen if r == 2]
    assert round2 and all(v is not None and v > 0 for v in round2)


# ---------------------------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("name", ["fpl", "fedproto"])
def test_single_level_baselines_run_two_rounds_on_the_last_decoder_map(tmp_path: Path, name: str,
                                                                       messages: list[Any]) -> None:
    result = _run(tmp_path, name, _cfg(name))
    assert result.global_params
    updates = [m for m in messages if isinstance(m, ClientUpdate)]
    assert updates and all(set(u.extras) == {"proto.last.0", "proto.last.1"} for u in updates)
    assert all(t.shape == (4,) for u in updates for t in u.extras.values())  # dec1 has features[0] channels
    later = [m for m in messages if isinstance(m, Broadcast) and m.config.get("round") == 2]
    shapes = {tuple(t.shape) for b in later for t in b.extras.values()}
    assert shapes == {(1, 4)} if name == "fedproto" else all(s[1] == 4 for s in shapes)


def test_fedproto_server_prototype_is_the_nk_weighted_mean() -> None:
    a = ClientUpdate("a", {}, 1, extras=pack_prototypes("proto.", {"last": {0: torch.zeros(2), 1: torch.ones(2)}}))
    b = ClientUpdate("b", {}, 3, extras=pack_prototypes("proto.", {"last": {1: torch.full((2,), 5.0)}}))
    protos = FedProto().server_prototypes([a, b])
    torch.testing.assert_close(protos["last"][1], torch.full((1, 2), 4.0))  # (1*1 + 3*5) / 4
    torch.testing.assert_close(protos["last"][0], torch.zeros(1, 2))


def test_prototype_mse_loss_uses_foreground_pixels_only() -> None:
    feats = torch.zeros(1, 2, 2, 2)
    feats[0, :, 0, 0] = torch.tensor([1.0, 3.0])
    labels = torch.tensor([[[1, 0], [0, 0]]])
    protos = {0: torch.full((1, 2), 100.0), 1: torch.tensor([[1.0, 1.0]])}
    assert float(prototype_mse_loss(feats, labels, protos)) == pytest.approx(2.0)  # ((0)^2 + 2^2) / 2
    assert float(prototype_mse_loss(feats, torch.zeros(1, 2, 2, dtype=torch.long), protos)) == 0.0


def test_pack_and_unpack_are_inverse_and_bad_keys_are_named() -> None:
    protos = {"encoder": {0: torch.zeros(3), 2: torch.ones(3)}}
    back = unpack_prototypes("proto.", {**pack_prototypes("proto.", protos), "other": torch.zeros(1)})
    assert set(back) == {"encoder"} and set(back["encoder"]) == {0, 2}
    with pytest.raises(ValueError, match="'proto.encoder.x'"):
        unpack_prototypes("proto.", {"proto.encoder.x": torch.zeros(1)})


def test_bad_hyperparameters_and_models_without_taps_are_refused() -> None:
    with pytest.raises(ValueError, match="tau"):
        build_algorithm({"name": "fedbcs", "tau": 0})
    with pytest.raises(ValueError, match="num_pixels"):
        build_algorithm({"name": "fedbcs", "num_pixels": 0})
    with pytest.raises(Exception, match="offers no auxiliary output 'encoder'"):
        FedBCS().aux_outputs(nn.Conv2d(1, 2, 1))


def test_pixel_subsampling_runs(tmp_path: Path) -> None:
    assert _run(tmp_path, "sub", _cfg({"name": "fedbcs", "num_pixels": 5})).global_params


# ---------------------------------------------------------------------------------------------- both engines
@pytest.mark.slow
def test_fedbcs_runs_on_flower_exactly_as_inprocess(tmp_path: Path) -> None:
    """No state on ``self``: the Flower ServerApp/ClientApps (in-memory Grid) give the same models,
    prototypes travelling both ways through Flower's records."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "flower"))
    from flower_testlib import run_flower_sim

    cfg_dict = _cfg("fedbcs", fsr=True)
    inproc = _run(tmp_path, "inproc", cfg_dict)
    flower = run_flower_sim(config_from_dict({**cfg_dict, "engine": "flower-sim"}), tmp_path / "flower")
    _assert_same(inproc, flower)
