"""Per-case segmentation metrics (Dice, IoU, HD95, precision, recall) and an accumulator.

The split follows MONAI's metric API: :func:`case_metrics` is a pure function of one case, and
:class:`MetricAccumulator` collects cases so they can be summarised per client and, by
concatenating the per-case lists, globally. The counts come from
:func:`monai.metrics.get_confusion_matrix` and the distances from
:func:`monai.metrics.compute_hausdorff_distance`; this module only adds the conventions for
empty masks, which MONAI leaves as NaN or inf.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_hausdorff_distance, get_confusion_matrix
from torch import Tensor

__all__ = ["METRIC_NAMES", "MetricAccumulator", "case_metrics"]

METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "hd95", "precision", "recall")
"""Keys of the foreground-mean metrics returned by :func:`case_metrics`."""

# MONAI's names for the confusion-matrix ratios we report.
_CM_METRICS = {"dice": "f1 score", "iou": "threat score", "precision": "precision", "recall": "sensitivity"}
_SPATIAL_DIMS = (2, 3)


def _check_spacing(spacing: Sequence[float], ndim: int) -> list[float]:
    values = [float(s) for s in spacing]
    if len(values) != ndim:
        raise ValueError(f"spacing needs one entry per spatial axis ({ndim}), got {values}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing entries must be finite and > 0, got {values}")
    return values


def case_metrics(pred: Tensor, target: Tensor, num_classes: int, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, IoU, HD95, precision and recall of one case, per foreground class and averaged.

    For each foreground class ``c`` in ``1..num_classes-1`` the binary masks ``pred == c`` and
    ``target == c`` are compared: Dice ``2TP/(2TP+FP+FN)``, IoU ``TP/(TP+FP+FN)``, precision
    ``TP/(TP+FP)``, recall ``TP/(TP+FN)``, and HD95, the symmetric 95th-percentile Hausdorff
    distance between the mask surfaces in millimetres (Euclidean, scaled by ``spacing``).

    Empty masks (decisions; MONAI itself returns NaN or inf here). Every case gets a finite
    value so that means over cases count every case:

    * target and prediction both empty (a correct "absent"): dice = iou = precision =
      recall = 1, hd95 = 0.
    * target non-empty, prediction empty (a miss): dice = iou = recall = 0, precision = 0
      (0/0 counted as the worst value, like scikit-learn's default), hd95 = the image diagonal.
    * target empty, prediction non-empty (a false alarm): dice = iou = precision = 0,
      recall = 0 (0/0, worst value), hd95 = the image diagonal.

    The image diagonal is ``sqrt(sum_i (shape_i * spacing_i)^2)`` mm, the diagonal of the field
    of view: larger than any distance a non-empty prediction can score, so a missed or spurious
    structure is never better than a poor segmentation, yet means stay finite.

    Args:
        pred: ``(*spatial)`` integer label map of one case, values in ``[0, num_classes)``
            (e.g. ``logits.argmax(0)``); 2D or 3D.
        target: ``(*spatial)`` integer label map, same shape as ``pred``.
        num_classes: number of classes including background, >= 2.
        spacing: voxel size in mm per spatial axis, in the axis order of ``pred``.

    Returns:
        ``dice, iou, hd95, precision, recall``: means over the foreground classes. When
        ``num_classes > 2`` also ``<metric>_c<k>`` for every foreground class ``k``
        (e.g. ``dice_c1``, ``hd95_c2``).

    Raises:
        ValueError: shapes differ, not 2D/3D, ``num_classes < 2`` or bad ``spacing``.
    """
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target, device=pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.ndim not in _SPATIAL_DIMS:
        raise ValueError(
            f"case_metrics takes one case as a (*spatial) label map with {_SPATIAL_DIMS} spatial axes, "
            f"got shape {tuple(pred.shape)}; use MetricAccumulator.add for batches"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
    spacing_mm = _check_spacing(spacing, pred.ndim)

    labels = torch.arange(1, num_classes, device=pred.device).view(-1, *([1] * pred.ndim))
    # (1, K, *spatial) one-hot of the K foreground classes, MONAI's (B, C, *spatial) layout.
    pred_oh = (pred[None] == labels)[None].float()
    target_oh = (target[None] == labels)[None].float()

    # float64 counts so that e.g. a hand-computed Dice of 0.8 comes out as 0.8, not 0.800000011.
    confusion = get_confusion_matrix(pred_oh, target_oh, include_background=True).double()  # (1, K, 4)
    tp, fp, fn = confusion[0, :, 0], confusion[0, :, 1], confusion[0, :, 3]
    pred_any, target_any = (tp + fp) > 0, (tp + fn) > 0
    both_empty = ~pred_any & ~target_any

    per_class: dict[str, Tensor] = {}
    for name, monai_name in _CM_METRICS.items():
        value = compute_confusion_matrix_metric(monai_name, confusion)[0]
        # Only 0/0 gives NaN: the best value when both masks are empty, else the worst.
        per_class[name] = torch.where(torch.isnan(value), both_empty.to(value.dtype), value)

    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing_mm, strict=True)))
    hd95 = torch.where(both_empty, 0.0, diagonal).to(dtype=torch.float32, device=pred.device)
    both_present = (pred_any & target_any).nonzero().flatten()
    if both_present.numel() > 0:
        with warnings.catch_warnings():
            # MONAI 1.6 warns about its own internal use of a deprecated argument.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            distances = compute_hausdorff_distance(
                pred_oh[:, both_present],
                target_oh[:, both_present],
                include_background=True,
                percentile=95,
                spacing=spacing_mm,
            )[0]
        hd95[both_present] = distances.to(hd95)
    per_class["hd95"] = hd95

    out = {name: float(per_class[name].mean()) for name in METRIC_NAMES}
    if num_classes > 2:
        for name in METRIC_NAMES:
            for k, value in enumerate(per_class[name].tolist(), start=1):
                out[f"{name}_c{k}"] = float(value)
    return out


class MetricAccumulator:
    """Collects :func:`case_metrics` over batches and summarises them.

    Typical use: one accumulator per client and split; a global summary over clients is
    ``add_case`` of every client's :meth:`per_case` into a fresh accumulator, which weights
    every case equally (averaging client summaries would weight clients equally instead).

    Args:
        num_classes: number of classes including background, >= 2.

    Raises:
        ValueError: ``num_classes < 2``.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
        self.num_classes = num_classes
        self._cases: list[dict[str, float]] = []

    def add(
        self,
        pred: Tensor,
        target: Tensor,
        spacing: Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]],
    ) -> list[dict[str, float]]:
        """Score a batch and store one entry per case.

        Args:
            pred: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer label maps
                (e.g. ``logits.argmax(1)``), 2D or 3D.
            target: integer label maps, same shape as ``pred``.
            spacing: voxel size in mm, either ``(B, D)`` (one row per case, tensor or nested
                sequence) or ``(D,)`` shared by the batch; ``D`` is the number of spatial axes
                and decides whether a size-1 axis 1 is a channel.

        Returns:
            The metrics of the added cases, in batch order.

        Raises:
            ValueError: shapes do not match each other or ``spacing``.
        """
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target, device=pred.device)
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
        if isinstance(spacing, Tensor):
            spacing = spacing.detach().cpu().numpy()
        sp = np.asarray(spacing, dtype=np.float64)
        if sp.ndim not in (1, 2) or sp.shape[-1] not in _SPATIAL_DIMS:
            raise ValueError(f"spacing must be (B, D) or (D,) with D in {_SPATIAL_DIMS}, got shape {sp.shape}")
        ndim = sp.shape[-1]
        if pred.ndim == ndim + 2 and pred.shape[1] == 1:
            pred, target = pred[:, 0], target[:, 0]
        if pred.ndim != ndim + 1:
            raise ValueError(
                f"pred must be (B, *spatial) or (B, 1, *spatial) with {ndim} spatial axes (from spacing), "
                f"got shape {tuple(pred.shape)}"
            )
        batch = pred.shape[0]
        if sp.ndim == 1:
            sp = np.broadcast_to(sp, (batch, ndim))
        if sp.shape[0] != batch:
            raise ValueError(f"spacing has {sp.shape[0]} rows but the batch has {batch} cases")
        new = [case_metrics(pred[b], target[b], self.num_classes, sp[b].tolist()) for b in range(batch)]
        self._cases.extend(new)
        return new

    def add_case(self, metrics: Mapping[str, float]) -> None:
        """Store one already-computed case, e.g. from another client's :meth:`per_case`."""
        self._cases.append({str(k): float(v) for k, v in metrics.items()})

    def extend(self, cases: Iterable[Mapping[str, float]]) -> None:
        """Store several already-computed cases (see :meth:`add_case`)."""
        for case in cases:
            self.add_case(case)

    def per_case(self) -> list[dict[str, float]]:
        """Return a copy of the stored cases, in the order they were added."""
        return [dict(case) for case in self._cases]

    def summary(self) -> dict[str, float]:
        """Mean over cases of every key, ignoring NaN (``np.nanmean``), plus ``n`` = cases.

        A key missing from a case counts as NaN there; a key that is NaN in every case is NaN.
        With no cases the result is ``{"n": 0}``.
        """
        keys: dict[str, None] = {}
        for case in self._cases:
            keys.update(dict.fromkeys(case))
        out: dict[str, float] = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
            for key in keys:
                values = np.array([case.get(key, np.nan) for case in self._cases], dtype=np.float64)
                out[key] = float(np.nanmean(values))
        out["n"] = len(self._cases)
        return out

    def reset(self) -> None:
        """Forget all stored cases."""
        self._cases.clear()

    def __len__(self) -> int:
        return len(self._cases)
