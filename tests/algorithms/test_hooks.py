"""The training-side hooks the next methods need, each used by a toy algorithm without any engine
edit: auxiliary outputs to losses, per-epoch hooks, and round metrics returned by ``aggregate``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import tiny_config
from fedseg.algorithms.base import Aggregate, Algorithm, Batch, ClientContext, Weighting
from fedseg.config import LossConfig, ModelConfig, TrainConfig, config_from_dict
from fedseg.data.base import SegmentationSet
from fedseg.engine.rundir import read_metrics
from fedseg.engine.trainer import Trainer, make_optimizer
from fedseg.losses import build_loss
from fedseg.models import build_model
from fedseg.records import SERVER
from fedseg.runtime.sim import run_inprocess
from fedseg.types import Broadcast, ClientUpdate, Params, ServerState

_CPU = torch.device("cpu")
_FEATURE = "model.1.submodule"  # the bottleneck block of the tiny MONAI U-Net


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(channels=[4, 8], strides=[2], num_res_units=0), 2, 1, 2)


def _data(n: int = 6) -> SegmentationSet:
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, 8, 8, dtype=torch.long)
    masks[:, :, 2:5, 3:6] = 1
    images = masks.float() + 0.3 * torch.randn(n, 1, 8, 8, generator=gen)
    return SegmentationSet(images=images, masks=masks, spacing=torch.ones(n, 2, dtype=torch.float64),
                           ids=[f"c{i}" for i in range(n)])


def _trainer(state: dict[str, Any], epochs: int = 1, **train: Any) -> Trainer:
    cfg = TrainConfig(batch_size=2, lr=1e-2, **train)
    return Trainer(_data(), build_loss(LossConfig(), 2), cfg, epochs=epochs, device=_CPU, seed=3, state=state)


def _ctx(state: dict[str, Any]) -> ClientContext:
    return ClientContext(client_id="site0", round=1, broadcast=Broadcast(params={}), state=state, device=_CPU)


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------------------------------------- auxiliary outputs
@dataclass
class FeatureL2(Algorithm):
    """A toy method: an L2 penalty on the bottleneck features, read from ``batch.aux``."""

    weight: float = 0.1

    def aux_outputs(self, model: nn.Module) -> Mapping[str, str]:
        return {"feat": _FEATURE}

    def extra_loss(self, model: nn.Module, batch: Batch, logits: torch.Tensor,
                   ctx: ClientContext) -> torch.Tensor | None:
        return self.weight * batch.aux["feat"].pow(2).mean()


def test_an_extra_loss_on_an_auxiliary_output_trains_exactly_as_a_hand_written_loop() -> None:
    model = _model()
    FeatureL2().local_train(model, _ctx({}), _trainer({}))
    assert _hooks_left(model) == 0  # the trainer removed its hooks

    # the same step by hand: own hook, same batches (same seed), same optimizer
    ref = _model()
    trainer = _trainer({})
    optimizer = make_optimizer(list(ref.parameters()), trainer.cfg)
    feats: dict[str, torch.Tensor] = {}
    handle = ref.get_submodule(_FEATURE).register_forward_hook(lambda m, i, o: feats.__setitem__("feat", o))
    ref.train()
    for batch in trainer.batches(shuffle=True):
        optimizer.zero_grad(set_to_none=True)
        logits = ref(batch.image)
        loss = trainer.task_loss(logits, batch.mask) + 0.1 * feats["feat"].pow(2).mean()
        loss.backward()
        optimizer.step()
    handle.remove()
    plain = _model()
    Algorithm().local_train(plain, _ctx({}), _trainer({}))
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert any(not torch.equal(plain.state_dict()[k], v) for k, v in ref.state_dict().items())  # the term acts


def test_a_replacing_loss_also_sees_the_auxiliary_outputs() -> None:
    seen: list[tuple[int, ...]] = []

    def loss(model: nn.Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.aux["feat"].shape))
        return logits.mean() + batch.aux["feat"].mean()

    model = _model()
    _trainer({}).fit(model, loss=loss, aux_outputs={"feat": _FEATURE})
    assert seen == [(2, 8, 4, 4)] * 3 and _hooks_left(model) == 0


# ---------------------------------------------------------------------------------------------- per-epoch hooks
@dataclass
class LastEpochCounter(Algorithm):
    """A toy method that records its epochs and counts the images of the last local epoch only
    (as FedBCS collects prototypes), in client state."""

    def on_epoch_start(self, model: nn.Module, ctx: ClientContext, epoch: int, epochs: int) -> None:
        ctx.state.setdefault("seen", []).append(("start", epoch, epochs))
        ctx.scratch["last_epoch"] = epoch == epochs

    def on_epoch_end(self, model: nn.Module, ctx: ClientContext, epoch: int, epochs: int) -> None:
        ctx.state["seen"].append(("end", epoch, epochs))

    def extra_loss(self, model: nn.Module, batch: Batch, logits: torch.Tensor,
                   ctx: ClientContext) -> torch.Tensor | None:
        if ctx.scratch["last_epoch"]:
            ctx.state["last_epoch_images"] = ctx.state.get("last_epoch_images", 0) + batch.image.shape[0]
        return None


def test_epoch_hooks_see_every_epoch_and_the_optimizer_is_not_restarted() -> None:
    state: dict[str, Any] = {}
    model = _model()
    LastEpochCounter().local_train(model, _ctx(state), _trainer(state, epochs=2, optimizer_state="persist"))
    assert state["seen"] == [("start", 1, 2), ("end", 1, 2), ("start", 2, 2), ("end", 2, 2)]
    assert state["last_epoch_images"] == 6  # one epoch of 6 images, not two

    plain_state: dict[str, Any] = {}
    plain = _model()
    _trainer(plain_state, epochs=2, optimizer_state="persist").fit(plain)
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    ours, ref = state["optimizer"]["state"], plain_state["optimizer"]["state"]
    assert ours.keys() == ref.keys()
    for index, entry in ref.items():
        assert float(ours[index]["step"]) == float(entry["step"]) == 6.0  # 2 epochs x 3 steps: no reset
        assert torch.equal(ours[index]["exp_avg"], entry["exp_avg"])
        assert torch.equal(ours[index]["exp_avg_sq"], entry["exp_avg_sq"])


# ---------------------------------------------------------------------------------------------- aggregate metrics
@dataclass
class CloserWeighsMore(Algorithm):
    """Weights ``1 / (1 + ||w_k - w||)`` (needs the global parameters) and reports the spread."""

    def aggregation_weights(self, updates: Sequence[ClientUpdate], global_params: Params,
                            server_state: ServerState) -> Weighting:
        dist = [float(sum((u.params[k].double() - global_params[k].double()).norm() ** 2
                          for k in u.params if u.params[k].is_floating_point()) ** 0.5) for u in updates]
        return Weighting([1 / (1 + d) for d in dist], [{"distance": d} for d in dist])

    def aggregate(self, rnd: int, updates: Sequence[ClientUpdate], global_params: Params,
                  server_state: ServerState) -> Aggregate:
        agg = super().aggregate(rnd, updates, global_params, server_state)
        distances = [row["distance"] for row in agg.weights.values()]
        agg.metrics[SERVER] = {"spread": max(distances) - min(distances), "clients": len(distances)}
        return agg


def test_weights_see_the_global_params_and_round_metrics_are_returned() -> None:
    updates = [ClientUpdate(client_id="b", params={"w": torch.tensor([3.0])}, num_examples=1),
               ClientUpdate(client_id="a", params={"w": torch.tensor([1.0])}, num_examples=1)]
    agg = CloserWeighsMore().aggregate(1, updates, {"w": torch.tensor([0.0])}, {})
    assert agg.params["w"].item() == pytest.approx((1 * 0.5 + 3 * 0.25) / 0.75)
    assert agg.weights == {"a": {"weight": 2 / 3, "n": 1.0, "distance": 1.0},
                           "b": {"weight": 1 / 3, "n": 1.0, "distance": 3.0}}
    assert agg.metrics == {SERVER: {"spread": 2.0, "clients": 2}} and agg.server_state == {}


def test_the_engine_writes_weights_and_aggregate_lines(tmp_path: Path) -> None:
    import fedseg.runtime.sim as sim

    original = sim.build_algorithm
    sim.build_algorithm = lambda spec: CloserWeighsMore()  # type: ignore[assignment]
    try:
        run_inprocess(config_from_dict(tiny_config(rounds=2)), tmp_path / "r", write_report=False)
    finally:
        sim.build_algorithm = original
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    weights = [r for r in records if r["kind"] == "weights"]
    assert [(r["round"], r["site"]) for r in weights] == [(t, s) for t in (1, 2) for s in ("site0", "site1")]
    assert all(r["distance"] > 0 for r in weights)
    for t in (1, 2):
        assert sum(r["weight"] for r in weights if r["round"] == t) == pytest.approx(1.0)
    rows = [r for r in records if r["kind"] == "aggregate"]
    assert [(r["round"], r["site"], r["clients"]) for r in rows] == [(1, SERVER, 2), (2, SERVER, 2)]
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["server_state"] == {}  # nothing logged through server state
