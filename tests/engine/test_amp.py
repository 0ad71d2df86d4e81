"""train.amp, train.grad_clip and cudnn.benchmark in the local training loop (engine/schedule.py Stepper)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from fedseg.config import ConfigError, LossConfig, ModelConfig, TrainConfig, config_from_dict
from fedseg.data.base import SegmentationSet
from fedseg.engine import schedule
from fedseg.engine.schedule import RoundPosition, Stepper
from fedseg.engine.seeding import configure_determinism
from fedseg.engine.trainer import SCALER_SUFFIX, Trainer
from fedseg.losses import build_loss
from fedseg.models import build_model

from conftest import tiny_config

_CPU = torch.device("cpu")


def _data(n: int = 6) -> SegmentationSet:
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(n, 1, 16, 16, generator=gen) > 0.7).long()
    images = masks.float() + 0.3 * torch.randn(n, 1, 16, 16, generator=gen)
    return SegmentationSet(images=images, masks=masks, spacing=torch.ones(n, 2, dtype=torch.float64),
                           ids=[f"c{i}" for i in range(n)])


def _model() -> nn.Module:
    torch.manual_seed(1)
    return build_model(ModelConfig(channels=[4, 8], strides=[2]), spatial_dims=2, in_channels=1, out_channels=2)


def _trainer(data: SegmentationSet, state: dict[str, Any] | None = None, seed: int = 0, **train: Any) -> Trainer:
    cfg = TrainConfig(**{"batch_size": 4, **train})
    return Trainer(data, build_loss(LossConfig(), 2), cfg, epochs=2, device=_CPU, seed=seed,
                   state={} if state is None else state)


def test_amp_off_is_bit_identical_to_the_plain_backward_step_loop() -> None:
    data = _data()
    ours = _model()
    _trainer(data, optimizer="sgd").fit(ours)
    theirs = _model()
    trainer = _trainer(data, optimizer="sgd")
    optimizer = torch.optim.SGD(list(theirs.parameters()), lr=1e-3, momentum=0.9)
    theirs.train()
    for _ in range(2):  # the loop fit ran before train.amp / lr_schedule / grad_clip existed
        for batch in trainer._batches(shuffle=True, augment=True):
            optimizer.zero_grad(set_to_none=True)
            trainer.loss_fn(theirs(batch.image), batch.mask).backward()
            optimizer.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bf16_on_cpu_trains_with_a_finite_loss_and_float32_weights() -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    metrics = _trainer(_data(), amp="bf16").fit(model)
    assert math.isfinite(metrics["loss"]) and metrics["steps"] == 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_fp16_on_cpu_is_refused_naming_train_amp() -> None:
    with pytest.raises(ValueError, match="train.amp: fp16 needs a CUDA device"):
        _trainer(_data(), amp="fp16").fit(_model())


class _FakeScaler:
    """Records the calls of a grad scaler; scales by 8 like a real one would by 2**k."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.factor = 8.0

    def scale(self, outputs: torch.Tensor) -> torch.Tensor:
        self.calls.append("scale")
        return outputs * self.factor

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append("unscale_")
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self.factor)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append("step")
        optimizer.step()

    def update(self) -> None:
        self.calls.append("update")

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factor = state["scale"]


def _one_param_step(scaler: Any, grad_clip: float | None) -> tuple[nn.Parameter, list[str]]:
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    cfg = TrainConfig(optimizer="sgd", lr=1.0, grad_clip=grad_clip)
    stepper = Stepper(cfg, optimizer, [weight], device=_CPU, position=RoundPosition(), steps_per_round=1,
                      scaler=scaler)
    stepper.backward_step((weight * weight).sum() / 2)  # gradient = weight, norm 5
    return weight, scaler.calls if scaler is not None else []


def test_the_fp16_scaler_unscales_before_clipping_then_steps_and_updates() -> None:
    weight, calls = _one_param_step(_FakeScaler(), grad_clip=1.0)
    assert calls == ["scale", "unscale_", "step", "update"]
    # clipped to norm 1 on the true (unscaled) gradient: w - g / |g|
    assert torch.allclose(weight.detach(), torch.tensor([3.0 - 0.6, 4.0 - 0.8]))
    _, calls = _one_param_step(_FakeScaler(), grad_clip=None)
    assert calls == ["scale", "step", "update"]  # no clip: step() unscales itself


def test_a_real_grad_scaler_skips_an_inf_step_and_backs_off() -> None:
    weight = nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stepper = Stepper(TrainConfig(grad_clip=1.0), optimizer, [weight], device=_CPU, position=RoundPosition(),
                      steps_per_round=1, scaler=scaler)
    stepper.backward_step(weight.sum() * float("inf"))
    assert torch.equal(weight.detach(), torch.tensor([1.0])) and scaler.get_scale() == 512.0


def test_fp16_scaler_state_persists_beside_the_optimizer_state(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPU has no fp16 autocast worth testing: run the fp16 step logic (a real CPU GradScaler) in float32
    monkeypatch.setattr(schedule, "autocast_dtype", lambda cfg, device: torch.float16 if cfg.amp == "fp16" else None)
    monkeypatch.setattr(Stepper, "autocast", lambda self: __import__("contextlib").nullcontext())
    state: dict[str, Any] = {}
    model = _model()
    _trainer(_data(), state, amp="fp16", optimizer_state="persist").fit(model)
    assert state["optimizer" + SCALER_SUFFIX]["scale"] == 65536.0 and "optimizer" in state
    state["optimizer" + SCALER_SUFFIX]["scale"] = 128.0
    _trainer(_data(), state, amp="fp16", optimizer_state="persist").fit(model)
    assert state["optimizer" + SCALER_SUFFIX]["scale"] == 128.0  # loaded, not a fresh 2**16
    fresh: dict[str, Any] = {}
    _trainer(_data(), fresh, amp="fp16", optimizer_state="reset").fit(model)
    assert fresh == {}


def test_grad_clip_bounds_the_step_even_with_a_huge_learning_rate() -> None:
    data = _data(4)
    moves = {}
    for clip in (None, 0.01):
        model = _model()
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        trainer = _trainer(data, optimizer="sgd", momentum=0.0, lr=1e4, grad_clip=clip)
        trainer.fit(model, epochs=1)  # one batch of 4: one step
        moves[clip] = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())
    assert moves[0.01] <= 1e4 * 0.01 * (1 + 1e-5)
    assert moves[0.01] == pytest.approx(1e4 * 0.01, rel=1e-4) and moves[None] > 2 * moves[0.01]


@pytest.mark.parametrize(("train", "key"), [({"amp": "fp32"}, "train.amp"), ({"grad_clip": 0}, "train.grad_clip"),
                                            ({"lr_schedule": "step"}, "train.lr_schedule"),
                                            ({"lr_warmup": 1.0}, "train.lr_warmup")])
def test_config_errors_name_the_train_key(train: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"train": train})


@pytest.mark.parametrize(("train", "key"), [({"grad_clip": 1.0}, "train.grad_clip"), ({"amp": "bf16"}, "train.amp")])
def test_dp_sgd_refuses_grad_clip_and_amp(train: dict[str, Any], key: str) -> None:
    cfg = tiny_config(train=train, privacy={"sample": {"enabled": True}})
    cfg["model"]["norm"] = "group"
    with pytest.raises(ConfigError, match=f"{key}.*privacy.sample.enabled"):
        config_from_dict(cfg)


def test_cudnn_benchmark_is_on_exactly_when_not_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled()
    try:
        configure_determinism(False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        configure_determinism(True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[0], flags[1]
        torch.use_deterministic_algorithms(flags[2], warn_only=True)
