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
           "improves"]


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
    ``data``, plus ``n``; whole images, or by sliding window when ``window`` is given."""
    acc = MetricAccumulator(num_classes=num_classes)
    if len(data) == 0:
        return {"n": 0}
    pred = predict_labels(model, data.images, device, batch_size, window)
    acc.add(pred, data.pixel_masks()[:, 0], data.spacing)
    return acc.summary()


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
