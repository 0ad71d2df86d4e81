"""Report pictures: per site, the best, median and worst test case by Dice, with image, reference
and prediction side by side (2D, or the middle slice along the last axis of 3D volumes).

Written after a simulated run, where this process holds every site's data (in-process engine),
from the selected checkpoint with the model each site is judged by (:mod:`fedseg.runtime.trained`),
so the pictures show the cases the test table scores. A deployed server never holds patient
images and writes none. Files: ``RUN_DIR/plots/overlays/<site>_<rank>.png`` and
``overlays.json`` (site -> rank, case id, Dice, file), which the report reads
(:mod:`fedseg.report.overlays`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedseg.data.base import SiteData
from fedseg.data.build import build_federated_data
from fedseg.data.cache import with_run_cache
from fedseg.engine.evaluate import predict_labels, sliding_window_for
from fedseg.io.atomic import atomic_open, atomic_write_text
from fedseg.metrics import MetricAccumulator
from fedseg.runtime.inference import overlay_rgb
from fedseg.runtime.trained import EvalError, open_run

__all__ = ["RANKS", "pick_cases", "overlay_panel", "write_test_overlays", "OVERLAY_DIR", "OVERLAY_INDEX"]

logger = logging.getLogger(__name__)

RANKS = ("best", "median", "worst")
OVERLAY_DIR = Path("plots") / "overlays"
"""Folder of the pictures, relative to the run directory."""
OVERLAY_INDEX = OVERLAY_DIR / "overlays.json"

_MIN_HEIGHT = 160  # small images are enlarged (nearest) so a reader can see the contours


def pick_cases(dice: Sequence[float]) -> list[tuple[str, int]]:
    """``(rank, index)`` of the best, median and worst Dice (NaN last; ties: the first case), each
    case at most once (fewer ranks with fewer than three cases)."""
    order = sorted(range(len(dice)), key=lambda i: (np.isnan(dice[i]), -dice[i] if not np.isnan(dice[i]) else 0, i))
    if not order:
        return []
    chosen = {"best": order[0], "median": order[len(order) // 2], "worst": order[-1]}
    out: list[tuple[str, int]] = []
    for rank in RANKS:
        if chosen[rank] not in [i for _, i in out]:
            out.append((rank, chosen[rank]))
    return out


def _slice(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    """2D arrays as they are; 3D: the middle slice along the last axis."""
    return array if spatial_dims == 2 else array[..., array.shape[-1] // 2]


def overlay_panel(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """``(H, 3W + 8, 3)`` uint8: the image, the reference and the prediction overlaid, side by side.

    Args:
        image: ``(C, H, W)`` float intensities.
        reference, prediction: ``(H, W)`` integer labels.
        num_classes: classes including background.
    """
    panels = [overlay_rgb(image, np.zeros_like(reference), num_classes), overlay_rgb(image, reference, num_classes),
              overlay_rgb(image, prediction, num_classes)]
    gap = np.full((image.shape[1], 4, 3), 255, dtype=np.uint8)
    out = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    scale = max(1, -(-_MIN_HEIGHT // out.shape[0]))
    return np.repeat(np.repeat(out, scale, axis=0), scale, axis=1) if scale > 1 else out


def write_test_overlays(run_dir: Path, sites: Sequence[SiteData] | None = None) -> dict[str, Any]:
    """Write the pictures and ``overlays.json`` (see the module docstring) and return the index.

    Args:
        run_dir: a finished run directory.
        sites: the run's sites (already loaded by the run); default built from its config.

    Raises:
        EvalError: not a finished run. A site without a usable model is skipped (logged).
    """
    trained = open_run(run_dir)
    cfg, info = trained.cfg, trained.info
    dims, num_classes = int(info["spatial_dims"]), int(info["num_classes"])
    sites = list(sites) if sites is not None else build_federated_data(
        with_run_cache(cfg.data, run_dir), cfg.seed, mixed_shapes=cfg.train.patch_size is not None).sites
    folder = run_dir / OVERLAY_DIR
    index: dict[str, Any] = {"selection": trained.selection, "sites": {}}
    for site in sites:
        test = site.test
        if len(test) == 0:
            continue
        try:
            scored = trained.load(site.name)
        except EvalError as exc:
            logger.warning("no report pictures for %s: %s", site.name, exc)
            continue
        pred = predict_labels(trained.model, test.images, trained.device, cfg.eval.batch_size, sliding_window_for(cfg))
        masks = test.pixel_masks()[:, 0]
        cases = MetricAccumulator(num_classes).add(pred, masks, test.spacing)
        entries = []
        for rank, i in pick_cases([float(c["dice"]) for c in cases]):
            panel = overlay_panel(_slice(test.images[i].numpy(), dims), _slice(masks[i].numpy(), dims),
                                  _slice(pred[i].numpy(), dims), num_classes)
            path = folder / f"{site.name}_{rank}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as fh:
                Image.fromarray(panel, mode="RGB").save(fh, format="PNG")
            entries.append({"rank": rank, "case": str(test.ids[i]), "dice": float(cases[i]["dice"]),
                            "file": str(path.relative_to(run_dir))})
        index["sites"][site.name] = {"model": scored.kind, "cases": entries}
    atomic_write_text(run_dir / OVERLAY_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return index
