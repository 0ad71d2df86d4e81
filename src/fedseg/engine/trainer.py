"""The local training loop (the engine's implementation of :class:`LocalTrainer`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from fedseg.algorithms.base import Batch, ExtraLoss
from fedseg.config import TrainConfig
from fedseg.data.base import SegmentationSet
from fedseg.engine.evaluate import evaluate
from fedseg.types import ClientState

__all__ = ["Trainer", "make_optimizer", "resolve_device", "EpochCallback"]

EpochCallback = Callable[[int, int, float], None]
"""``(epoch, total_epochs, mean_loss)`` after each local epoch (progress display)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over ``params``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


class Trainer:
    """Mini-batch training over one client's in-memory training split.

    The split is moved to the device once per round; batches are drawn by a permutation from a
    generator seeded per (run seed, round, client), so a round is reproducible on its own.
    """

    def __init__(
        self,
        data: SegmentationSet,
        loss_fn: nn.Module,
        cfg: TrainConfig,
        *,
        epochs: int,
        device: torch.device,
        seed: int,
        state: ClientState,
        on_epoch: EpochCallback | None = None,
        eval_sets: dict[str, SegmentationSet] | None = None,
        num_classes: int = 2,
        eval_batch_size: int = 16,
    ) -> None:
        self.cfg = cfg
        self.loss_fn = loss_fn
        self.epochs = epochs
        self.device = device
        self.state = state
        self.num_examples = len(data)
        self.on_epoch = on_epoch
        self.eval_sets = eval_sets or {}
        self.num_classes = num_classes
        self.eval_batch_size = eval_batch_size
        self._images = data.images.to(device)
        self._masks = data.masks.to(device)
        self._gen = torch.Generator()
        self._gen.manual_seed(seed)

    def task_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.loss_fn(logits, mask)
        return loss

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        if split not in self.eval_sets:
            raise KeyError(f"no {split!r} split for this client; available: {', '.join(self.eval_sets) or 'none'}")
        was_training = model.training
        try:
            return evaluate(model, self.eval_sets[split], num_classes=self.num_classes, device=self.device,
                            batch_size=self.eval_batch_size)
        finally:
            model.train(was_training)

    def batches(self, *, shuffle: bool = False) -> Iterator[Batch]:
        n, bs = self.num_examples, self.cfg.batch_size
        order = torch.randperm(n, generator=self._gen) if shuffle else torch.arange(n)
        order = order.to(self.device)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            yield Batch(image=self._images.index_select(0, idx), mask=self._masks.index_select(0, idx))

    def fit(
        self,
        model: nn.Module,
        *,
        epochs: int | None = None,
        extra_loss: ExtraLoss | None = None,
        trainable: set[str] | None = None,
        optimizer_key: str = "optimizer",
    ) -> dict[str, float]:
        epochs = self.epochs if epochs is None else epochs
        named = list(model.named_parameters())
        frozen = [p for n, p in named if trainable is not None and n not in trainable and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        params = [p for _, p in named if p.requires_grad]
        optimizer = make_optimizer(params, self.cfg)
        persist = self.cfg.optimizer_state == "persist"
        if persist and optimizer_key in self.state:
            optimizer.load_state_dict(self.state[optimizer_key])
        model.train()
        total = task_total = 0.0
        steps = 0
        try:
            for epoch in range(epochs):
                epoch_loss = 0.0
                epoch_steps = 0
                for batch in self.batches(shuffle=True):
                    optimizer.zero_grad(set_to_none=True)
                    logits = model(batch.image)
                    task = self.loss_fn(logits, batch.mask)
                    loss = task
                    if extra_loss is not None:
                        extra = extra_loss(model, batch, logits)
                        if extra is not None:
                            loss = loss + extra
                    loss.backward()
                    optimizer.step()
                    value = float(loss.detach())
                    epoch_loss += value
                    total += value
                    task_total += float(task.detach())
                    epoch_steps += 1
                    steps += 1
                if self.on_epoch is not None:
                    self.on_epoch(epoch + 1, epochs, epoch_loss / max(epoch_steps, 1))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        if persist:
            self.state[optimizer_key] = _to_cpu(optimizer.state_dict())
        return {"loss": total / max(steps, 1), "task_loss": task_total / max(steps, 1), "steps": float(steps)}
