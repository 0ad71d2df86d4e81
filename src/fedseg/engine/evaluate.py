"""Evaluation of a model on one split: argmax prediction + per-case metrics in mm.

Whole images go through the model directly, or, when a :class:`SlidingWindow` is given (a
model trained on patches, or volumes too large for one pass), through MONAI's
:func:`~monai.inferers.sliding_window_inference` with the patch size as window. Metrics use
each case's own voxel spacing, so HD95 is in millimetres.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from fedseg.algorithms.base import Algorithm
from fedseg.config import RunConfig
from fedseg.data.base import SegmentationSet
from fedseg.metrics import MetricAccumulator
from fedseg.types import ClientState, Params

__all__ = ["SlidingWindow", "sliding_window_for", "predict_logits", "evaluate", "predict_labels", "load_eval_model",
           "improves", "case_groups"]


@dataclass(frozen=True)
class SlidingWindow:
    """Settings of MONAI's sliding-window inference.

    Attributes:
        roi_size: window size, one entry per spatial axis (the training patch size).
        overlap: fraction of overlap between neighbouring windows, in ``[0, 1)``.
        mode: ``"gaussian"`` (centre-weighted blending, nnU-Net) or ``"constant"`` (plain mean).
        batch_size: windows per forward pass.
    """

    roi_size: tuple[int, ...]
    overlap: float = 0.5
    mode: str = "gaussian"
    batch_size: int = 4


def sliding_window_for(cfg: RunConfig) -> SlidingWindow | None:
    """The run's sliding-window settings: ``eval.sliding_window.roi_size`` or else
    ``train.patch_size``; ``None`` (whole images) when neither is set."""
    sw = cfg.eval.sliding_window
    roi = sw.roi_size if sw.roi_size is not None else cfg.train.patch_size
    if roi is None:
        return None
    return SlidingWindow(roi_size=tuple(roi), overlap=sw.overlap, mode=sw.mode, batch_size=sw.batch_size)


def _check_window(window: SlidingWindow, spatial: Sequence[int]) -> None:
    if len(window.roi_size) != len(spatial):
        raise ValueError(
            f"sliding-window roi_size {list(window.roi_size)} has {len(window.roi_size)} entries but the images "
            f"are {len(spatial)}D {list(spatial)}; set eval.sliding_window.roi_size (or train.patch_size) per axis"
        )


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, device: torch.device, window: SlidingWindow | None = None
) -> torch.Tensor:
    """Logits of one batch of whole images, on ``device``.

    Args:
        model: maps ``(B, C, *roi)`` to ``(B, K, *roi)`` logits; put in eval mode here.
        images: ``(B, C, *spatial)`` float32, any device.
        device: where the model runs.
        window: sliding-window settings, or ``None`` to pass whole images.

    Returns:
        ``(B, K, *spatial)`` float logits (sliding window: blended window logits).
    """
    model.eval()
    x = images.to(device)
    if window is None:
        out: torch.Tensor = model(x)
        return out
    _check_window(window, x.shape[2:])
    result = sliding_window_inference(
        x, roi_size=list(window.roi_size), sw_batch_size=window.batch_size, predictor=model,
        overlap=window.overlap, mode=window.mode,
    )
    if not isinstance(result, torch.Tensor):
        raise TypeError(f"the model returned {type(result).__name__}; segmentation models must return a tensor")
    return result


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int,
    window: SlidingWindow | None = None,
) -> torch.Tensor:
    """Label maps ``(N, *spatial)`` int64 (CPU) for ``images`` ``(N, C, *spatial)``, ``batch_size``
    cases at a time, whole or by sliding window."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        logits = predict_logits(model, images[start : start + batch_size], device, window)
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
    window: SlidingWindow | None = None,
) -> dict[str, float]:
    """Mean Dice, IoU, HD95 (mm, from ``data.spacing``), precision, recall over the cases of
    ``data``, plus ``n``; whole images, or by sliding window when ``window`` is given.

    The cases go through the model ``batch_size`` at a time (:func:`case_groups`; cases of
    different shapes in separate passes); a split streamed from disk is read group by group, so
    memory holds one group, never the split."""
    acc = MetricAccumulator(num_classes=num_classes)
    if len(data) == 0:
        return {"n": 0}
    for start, stop in case_groups(data, batch_size):
        if data.in_memory:
            images, masks = data.images[start:stop], data.pixel_masks()[start:stop]
        else:  # streamed: only this group of cases is read
            cases = [data.case(i) for i in range(start, stop)]
            if any(m is None for _, m in cases):
                data.pixel_masks()  # raises MissingMaskError, naming the supervision kind
            images = torch.stack([image for image, _ in cases])
            masks = torch.stack([m for _, m in cases if m is not None])
        pred = predict_labels(model, images, device, batch_size, window)
        acc.add(pred, masks[:, 0], data.spacing[start:stop])
    return acc.summary()


def case_groups(data: SegmentationSet, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of consecutive cases of one shape, at most ``batch_size`` each: the
    forward passes of :func:`evaluate` (for a split of one shape, exactly ``batch_size`` slices)."""
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(data) + 1):
        if i == len(data) or i - start == batch_size or data.shape_of(i) != data.shape_of(start):
            groups.append((start, i))
            start = i
    return groups


def load_eval_model(
    algorithm: Algorithm, model: nn.Module, params: Params, extras: Mapping[str, torch.Tensor], state: ClientState
) -> None:
    """Load ``params`` into ``model`` and let the algorithm prepare it
    (:meth:`~fedseg.algorithms.base.Algorithm.prepare_eval_model`): the one way every evaluation
    path (in-run, ``fedseg eval``, ``fedseg predict``, Flower) readies a model."""
    model.load_state_dict(params)
    algorithm.prepare_eval_model(model, extras, state)
    model.eval()


def improves(dice: float, best: float | None) -> bool:
    """Whether a validation Dice beats the best so far: strictly higher (the earlier round wins a
    tie); NaN never does."""
    if math.isnan(dice):
        return False
    return best is None or dice > best
