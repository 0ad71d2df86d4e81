"""``fedseg evaluate-folder GT_DIR PRED_DIR``: score any predictions against reference masks.

Cases are matched by name (file stem without ``.nii.gz``/``.png``...). Each case is scored on its
own grid and spacing (mm) with the metrics ``fedseg eval`` uses
(:func:`fedseg.metrics.case_metrics`: Dice, IoU, HD95, precision, recall, with its empty-mask
conventions) plus the normalised surface Dice of MONAI's
:func:`~monai.metrics.compute_surface_dice` at a tolerance in mm (both surfaces empty: 1; one
empty: 0). ``labels`` picks the foreground labels scored (default every label > 0 found in the
references); other labels count as background.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_surface_dice

from fedseg.io import SUFFIXES, file_stem, file_suffix, read_mask
from fedseg.io.atomic import atomic_write_text
from fedseg.metrics import case_metrics
from fedseg.runtime.trained import EvalError

__all__ = ["surface_dice", "evaluate_folder", "per_case_csv", "eval_outputs", "json_safe", "CASE", "MEAN"]

CASE = "case"
"""Column of the case name in per-case CSVs."""

MEAN = "mean"
"""The ``case`` value of the row holding the means over cases."""


def surface_dice(pred: np.ndarray, target: np.ndarray, num_classes: int, spacing: Sequence[float],
                 tolerance: float) -> list[float]:
    """Normalised surface Dice per foreground class (1..num_classes-1) at ``tolerance`` mm.

    Both masks of a class empty: 1 (a correct absence, as ``case_metrics`` counts Dice); one
    empty: 0.
    """
    p = torch.nn.functional.one_hot(torch.as_tensor(pred, dtype=torch.long), num_classes)
    t = torch.nn.functional.one_hot(torch.as_tensor(target, dtype=torch.long), num_classes)
    p, t = p.movedim(-1, 0)[None], t.movedim(-1, 0)[None]
    nsd = compute_surface_dice(p, t, class_thresholds=[tolerance] * (num_classes - 1), include_background=False,
                               spacing=[float(s) for s in spacing])[0]
    out = []
    for k, value in enumerate(nsd.tolist(), start=1):
        if math.isnan(value):
            value = 1.0 if not (pred == k).any() and not (target == k).any() else 0.0
        out.append(float(value))
    return out


def _cases(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvalError(f"{what} {folder}: no such folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and file_suffix(path) in SUFFIXES \
                and not file_stem(path).endswith("_overlay"):
            found.setdefault(file_stem(path), path)
    return found


def _remap(labels: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    out = np.zeros(labels.shape, dtype=np.int64)
    for i, label in enumerate(wanted, start=1):
        out[labels == label] = i
    return out


def evaluate_folder(gt_dir: Path, pred_dir: Path, *, labels: Sequence[int] | None = None,
                    tolerance: float = 1.0) -> list[dict[str, Any]]:
    """Per-case metrics of every reference in ``gt_dir`` against the same-named file in ``pred_dir``.

    Returns:
        One row per case (``case``, ``dice``, ``iou``, ``hd95``, ``precision``, ``recall``, ``nsd``,
        and per label ``<metric>_c<k>`` with several labels), sorted by case.

    Raises:
        EvalError: a folder is missing or empty, a reference has no prediction, shapes differ, or
            ``labels`` holds 0 or a negative label.
    """
    refs, preds = _cases(gt_dir, "GT_DIR"), _cases(pred_dir, "PRED_DIR")
    if not refs:
        raise EvalError(f"GT_DIR {gt_dir}: no mask files ({', '.join(SUFFIXES)})")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise EvalError(f"PRED_DIR {pred_dir}: no prediction for {len(missing)} reference case(s): "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if labels is not None and (not labels or min(labels) <= 0):
        raise EvalError(f"--labels {list(labels)}: foreground labels are integers > 0")
    masks = {name: (read_mask(refs[name]), read_mask(preds[name])) for name in refs}
    wanted = sorted(labels) if labels is not None else sorted(
        {int(v) for ref, _ in masks.values() for v in np.unique(ref.array)} - {0}) or [1]
    rows = []
    for name, (ref, pred) in masks.items():
        r, p = np.asarray(ref.array), np.asarray(pred.array)
        if r.shape != p.shape:
            raise EvalError(f"{preds[name]}: shape {p.shape} differs from the reference {refs[name]} {r.shape}")
        r, p = _remap(r, wanted), _remap(p, wanted)
        k = len(wanted) + 1
        metrics = case_metrics(torch.from_numpy(p), torch.from_numpy(r), k, ref.spacing)
        nsd = surface_dice(p, r, k, ref.spacing, tolerance)
        extra = {f"nsd_c{c}": v for c, v in enumerate(nsd, start=1)} if k > 2 else {}
        rows.append({CASE: name, **metrics, "nsd": float(np.mean(nsd)), **extra})
    return rows


def per_case_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write per-case rows and a last ``mean`` row (means over cases, NaN skipped) as CSV."""
    columns = list(dict.fromkeys([CASE, *(k for row in rows for k in row)]))
    mean: dict[str, Any] = {CASE: MEAN}
    for col in columns:
        values = [float(r[col]) for r in rows if isinstance(r.get(col), (int, float)) and not isinstance(r.get(col),
                                                                                                        bool)]
        values = [v for v in values if not math.isnan(v)]
        if values and col != CASE:
            mean[col] = float(np.mean(values))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows([*rows, mean])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())


def json_safe(value: Any) -> Any:
    """``value`` with NaN floats (at any depth) as ``None``, for strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def eval_outputs(rows: Sequence[dict[str, Any]], cases: Sequence[dict[str, Any]], csv_path: Path,
                 as_json: bool) -> bool:
    """``fedseg eval``'s outputs beside the table: the per-case CSV, and with ``as_json`` the
    per-site rows and cases as JSON on stdout (then returns True: no table)."""
    per_case_csv(cases, csv_path)
    if as_json:
        sys.stdout.write(json.dumps(json_safe({"sites": list(rows), "cases": list(cases), "per_case_csv": str(csv_path)}),
                                    indent=2) + "\n")
    return as_json
