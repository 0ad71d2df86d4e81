"""Evaluation of a model on one split: argmax prediction + per-case metrics."""

from __future__ import annotations

import torch
from torch import nn

from fedseg.data.base import SegmentationSet
from fedseg.metrics import MetricAccumulator

__all__ = ["evaluate", "predict_labels"]


@torch.no_grad()
def predict_labels(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Label maps ``(N, *spatial)`` int64 for ``images`` ``(N, C, *spatial)``."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start : start + batch_size].to(device))
        out.append(logits.argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty((0, *images.shape[2:]), dtype=torch.long)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: SegmentationSet,
    *,
    num_classes: int,
    device: torch.device,
    batch_size: int = 16,
) -> dict[str, float]:
    """Mean Dice, IoU, HD95 (mm), precision, recall over the cases of ``data``, plus ``n``."""
    acc = MetricAccumulator(num_classes=num_classes)
    if len(data) == 0:
        return {"n": 0}
    pred = predict_labels(model, data.images, device, batch_size)
    acc.add(pred, data.masks[:, 0], data.spacing)
    return acc.summary()
