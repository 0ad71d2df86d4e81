"""Learning-rate schedules over a whole federated run, and the AMP / gradient-clipping step.

The learning rate of local step ``s`` (0-based) of round ``r`` (1-based) of a run of ``R``
rounds, where one round's local training takes ``S`` steps, is a pure function of those numbers:

    t = (r - 1) S + s,   T = R S,   w = round(lr_warmup T)
    warm-up (t < w):   lr (t + 1) / w
    constant:          lr
    poly (nnU-Net):    lr (1 - (t - w) / (T - w)) ^ 0.9
    cosine:            lr (1 + cos(pi (t - w) / (T - w))) / 2

so a resumed run (which restarts a round from its seeded state) gets the same learning rates. ``S``
is the client's own step count for the call (local epochs times batches per epoch), so clients of
different sizes all go from ``lr`` to ~0 over the run. A round after the last federated one (the
post-federation personalisation phase) runs the schedule over that phase alone (``r = R = 1``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from fedseg.config import TrainConfig

__all__ = ["POLY_EXPONENT", "RoundPosition", "learning_rate", "Stepper", "Scaler", "autocast_dtype"]

POLY_EXPONENT = 0.9
"""nnU-Net's poly exponent (``nnUNetTrainer``: ``PolyLRScheduler(..., exponent=0.9)``)."""


@dataclass(frozen=True)
class RoundPosition:
    """Where a round sits in the run: ``round`` (1-based) of ``rounds``."""

    round: int = 1
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.round < 1:
            raise ValueError(f"round {self.round} of {self.rounds}: both must be >= 1")

    def clamped(self) -> RoundPosition:
        """A round past the last one (personalisation) runs a schedule of its own."""
        return self if self.round <= self.rounds else RoundPosition(1, 1)


def learning_rate(cfg: TrainConfig, position: RoundPosition, step: int, steps_per_round: int) -> float:
    """The learning rate of local ``step`` (0-based) of the round at ``position`` (see the module doc).

    Args:
        cfg: the ``train`` section (``lr``, ``lr_schedule``, ``lr_warmup``).
        position: the round and the number of rounds.
        step: local step within this round's training call (0-based; clamped to the round).
        steps_per_round: local steps the call takes (epochs x batches per epoch; >= 1).
    """
    pos = position.clamped()
    per_round = max(1, steps_per_round)
    total = pos.rounds * per_round
    t = min((pos.round - 1) * per_round + max(step, 0), total - 1)
    warm = round(cfg.lr_warmup * total)
    if t < warm:
        return cfg.lr * (t + 1) / warm
    if cfg.lr_schedule == "constant":
        return cfg.lr
    frac = (t - warm) / max(total - warm, 1)
    if cfg.lr_schedule == "poly":
        return float(cfg.lr * (1.0 - frac) ** POLY_EXPONENT)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: off).

    Raises:
        ValueError: ``fp16`` on a device other than CUDA (CPU autocast to float16 is slow and
            needs a grad scaler for nothing: use ``bf16``).
    """
    if cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        if device.type != "cuda":
            raise ValueError(f"train.amp: fp16 needs a CUDA device, but training runs on {device} "
                             "(train.device); use train.amp: bf16 on CPU, or off")
        return torch.float16
    return torch.bfloat16


class Scaler(Protocol):
    """What :class:`Stepper` uses of :class:`torch.amp.GradScaler` (a fake in tests)."""

    def scale(self, outputs: torch.Tensor) -> torch.Tensor: ...
    def unscale_(self, optimizer: torch.optim.Optimizer) -> None: ...
    def step(self, optimizer: torch.optim.Optimizer) -> Any: ...
    def update(self) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Stepper:
    """One optimisation step with the ``train`` section's schedule, AMP and gradient clipping.

    With everything off (``amp: off``, ``lr_schedule: constant`` without warm-up, ``grad_clip``
    unset) :meth:`backward_step` is exactly ``loss.backward(); optimizer.step()`` and the learning
    rate is never written, so CPU results stay bit-identical to the plain loop.

    Args:
        cfg: the ``train`` section.
        optimizer: the optimizer (possibly Opacus' ``DPOptimizer``).
        params: the parameters whose global gradient norm ``grad_clip`` bounds.
        device: the training device (autocast device type).
        position: the round's place in the run (for the schedule).
        steps_per_round: local steps of this training call (for the schedule).
        scaler: a grad scaler for ``fp16`` (default: a new :class:`torch.amp.GradScaler`).
    """

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], *,
                 device: torch.device, position: RoundPosition, steps_per_round: int,
                 scaler: Scaler | None = None) -> None:
        self.cfg = cfg
        self.optimizer = optimizer
        self.params = params
        self.device = device
        self.position = position
        self.steps_per_round = steps_per_round
        self.dtype = autocast_dtype(cfg, device)
        if scaler is None and self.dtype == torch.float16:
            scaler = torch.amp.GradScaler(device.type)
        self.scaler = scaler
        self.scheduled = cfg.lr_schedule != "constant" or cfg.lr_warmup > 0
        self.step = 0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's autocast context (a no-op with ``amp: off``)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor) -> None:
        """Backward, (unscale,) clip, set the scheduled learning rate, step; counts the step."""
        if self.scheduled:
            lr = learning_rate(self.cfg, self.position, self.step, self.steps_per_round)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if self.scaler is None:
            loss.backward()  # type: ignore[no-untyped-call]
            if self.cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            if self.cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.scaler.step(self.optimizer)  # skips the step when a gradient is inf/nan
            self.scaler.update()
        self.step += 1

    def load_scaler(self, state: dict[str, Any] | None) -> None:
        """Restore the grad scaler from a saved ``state_dict`` (no-op without a scaler or a state)."""
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)
