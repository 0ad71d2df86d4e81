"""A tiny two-site NIfTI dataset with known spacings and shapes, and its run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

CASES: dict[str, list[tuple[tuple[int, int, int], tuple[float, float, float]]]] = {
    "siteA": [((24, 20, 12), (1.0, 1.0, 3.0)), ((24, 24, 12), (1.0, 1.0, 3.0)), ((28, 20, 10), (0.9, 0.9, 3.0)),
              ((24, 20, 12), (1.0, 1.0, 2.5))],
    "siteB": [((20, 20, 16), (1.2, 1.2, 2.0)), ((24, 20, 12), (1.0, 1.0, 3.0)), ((32, 24, 12), (0.8, 0.8, 3.0)),
              ((24, 20, 14), (1.0, 1.0, 3.0))],
}


def write_dataset(root: Path) -> None:
    """``root/<site>/{images,masks}``: integer intensities (so percentiles are exact), a labelled box."""
    rng = np.random.default_rng(0)
    for site, cases in CASES.items():
        for sub in ("images", "masks"):
            (root / site / sub).mkdir(parents=True, exist_ok=True)
        for i, (shape, spacing) in enumerate(cases):
            affine = np.diag([*spacing, 1.0])
            image = rng.integers(0, 200, size=shape).astype(np.int16)
            mask = np.zeros(shape, np.uint8)
            mask[2:6, 2:6, 1:4] = 1
            image[mask == 1] += 300
            nib.save(nib.Nifti1Image(image, affine), str(root / site / "images" / f"{site}_c{i}_0000.nii.gz"))
            nib.save(nib.Nifti1Image(mask, affine), str(root / site / "masks" / f"{site}_c{i}.nii.gz"))


def plan_config(root: Path, **extra: Any) -> dict[str, Any]:
    """Every case is a training case (split 0.99 train), grids made equal by a hand-set target shape."""
    cfg: dict[str, Any] = {
        "name": "plantiny",
        "seed": 0,
        "data": {"source": "folder", "root": str(root), "spatial_dims": 3, "modality": "MR", "channels": 1,
                 "num_classes": 2, "cache": False, "preprocess": {"target_shape": [8, 8, 4]},
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"batch_size": 2, "lr": 1e-2},
        "federation": {"rounds": 1, "local_epochs": 1},
        "plan": {"gpu_memory_gb": 8},
    }
    cfg.update(extra)
    return cfg
