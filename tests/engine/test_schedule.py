"""train.lr_schedule: hand-computed values, warm-up, and the schedule across rounds and a resume."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedseg.config import LossConfig, ModelConfig, TrainConfig, config_from_dict
from fedseg.data.base import SegmentationSet
from fedseg.engine import schedule
from fedseg.engine.schedule import RoundPosition, learning_rate
from fedseg.engine.trainer import Trainer
from fedseg.losses import build_loss
from fedseg.models import build_model

from conftest import tiny_config


def _lr(kind: str, rnd: int, step: int, *, rounds: int = 2, per_round: int = 5, warmup: float = 0.0) -> float:
    cfg = TrainConfig(lr=1.0, lr_schedule=kind, lr_warmup=warmup)
    return learning_rate(cfg, RoundPosition(rnd, rounds), step, per_round)


def test_poly_is_nnunets_exponent_09_over_the_whole_run() -> None:
    # T = 2 rounds x 5 steps = 10; t = 5 (round 2, step 0), t = 9 (the last step)
    assert _lr("poly", 1, 0) == 1.0
    assert _lr("poly", 1, 2) == pytest.approx(0.8**0.9)
    assert _lr("poly", 2, 0) == pytest.approx(0.5**0.9) == pytest.approx(0.535887, abs=1e-6)
    assert _lr("poly", 2, 4) == pytest.approx(0.1**0.9) == pytest.approx(0.125893, abs=1e-6)


def test_cosine_and_constant_values() -> None:
    assert _lr("cosine", 1, 0) == 1.0
    assert _lr("cosine", 2, 0) == pytest.approx(0.5)
    assert _lr("cosine", 1, 1, rounds=1, per_round=4) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert {_lr("constant", r, s) for r in (1, 2) for s in range(5)} == {1.0}


def test_warmup_ramps_linearly_then_the_decay_spans_the_rest() -> None:
    # T = 10, warm-up 0.2 -> 2 steps: lr 0.5, 1.0; then poly over the remaining 8 steps
    assert [_lr("poly", 1, s, warmup=0.2) for s in (0, 1, 2)] == pytest.approx([0.5, 1.0, 1.0])
    assert _lr("poly", 2, 1, warmup=0.2) == pytest.approx((1 - 4 / 8) ** 0.9)
    assert _lr("constant", 1, 0, warmup=0.2) == 0.5 and _lr("constant", 2, 4, warmup=0.2) == 1.0


def test_a_round_past_the_last_runs_a_schedule_of_its_own() -> None:
    # the post-federation personalisation phase (round R + 1) does not train at lr 0
    assert _lr("poly", 3, 0) == 1.0 and _lr("poly", 3, 4) == pytest.approx(0.2**0.9, rel=1e-6)


def test_steps_past_the_round_are_clamped_to_its_last_step() -> None:
    assert _lr("poly", 2, 99) == _lr("poly", 2, 4) > 0


def _data() -> SegmentationSet:
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(5, 1, 8, 8, generator=gen) > 0.6).long()
    images = masks.float() + 0.3 * torch.randn(5, 1, 8, 8, generator=gen)
    return SegmentationSet(images=images, masks=masks, spacing=torch.ones(5, 2, dtype=torch.float64),
                           ids=[f"c{i}" for i in range(5)])


def _round(model: torch.nn.Module, state: dict[str, Any], rnd: int, cfg: TrainConfig) -> None:
    trainer = Trainer(_data(), build_loss(LossConfig(), 2), cfg, epochs=2, device=torch.device("cpu"), seed=rnd,
                      state=state)
    trainer.position = RoundPosition(rnd, 3)
    trainer.fit(model)


def test_the_schedule_across_a_resume_restarts_each_round_at_its_own_lr(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, float]] = []
    real = schedule.learning_rate

    def spy(cfg: TrainConfig, position: RoundPosition, step: int, per_round: int) -> float:
        value = real(cfg, position, step, per_round)
        seen.append((position.round, step, value))
        return value

    monkeypatch.setattr(schedule, "learning_rate", spy)
    cfg = TrainConfig(batch_size=2, lr=0.1, lr_schedule="poly", optimizer_state="persist")
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=[4, 8], strides=[2]), spatial_dims=2, in_channels=1, out_channels=2)
    state: dict[str, Any] = {}
    snapshots = []
    for rnd in (1, 2, 3):
        snapshots.append((copy.deepcopy(model.state_dict()), copy.deepcopy(state)))
        _round(model, state, rnd, cfg)
    # 5 cases, batch 2 -> 3 steps an epoch, 2 epochs: 6 steps a round, T = 18
    assert [(r, s) for r, s, _ in seen] == [(r, s) for r in (1, 2, 3) for s in range(6)]
    assert [v for _, _, v in seen] == pytest.approx([0.1 * (1 - t / 18) ** 0.9 for t in range(18)])
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * (1 / 18) ** 0.9)
    # resume before round 2 (the checkpoint's weights and client state): rounds 2-3 replay bit for bit
    weights, saved = snapshots[1]
    resumed = build_model(ModelConfig(channels=[4, 8], strides=[2]), spatial_dims=2, in_channels=1, out_channels=2)
    resumed.load_state_dict(weights)
    seen.clear()
    for rnd in (2, 3):
        _round(resumed, saved, rnd, cfg)
    assert seen[0][:2] == (2, 0) and seen[0][2] == pytest.approx(0.1 * (1 - 6 / 18) ** 0.9)
    for name, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_the_client_runtime_tells_the_trainer_its_round(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fedseg.runtime.sim import run_inprocess

    positions: set[tuple[int, int]] = set()
    real = schedule.learning_rate

    def spy(cfg: TrainConfig, position: RoundPosition, step: int, per_round: int) -> float:
        positions.add((position.round, position.rounds))
        return real(cfg, position, step, per_round)

    monkeypatch.setattr(schedule, "learning_rate", spy)
    run_inprocess(config_from_dict(tiny_config(train={"lr_schedule": "cosine"})), tmp_path / "run", write_report=False)
    assert positions == {(1, 2), (2, 2)}
