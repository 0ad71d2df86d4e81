"""Tiny multi-site datasets on disk for data, CLI and runtime tests (2D PNG and 3D NIfTI)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image


def write_png_case(site: Path, stem: str, size: tuple[int, int] = (16, 12), label: int = 1,
                   mask_size: tuple[int, int] | None = None, rgb: bool = False, seed: int = 0) -> None:
    """``images/<stem>.png`` (HxW = size) and ``masks/<stem>.png`` with a labelled square."""
    (site / "images").mkdir(parents=True, exist_ok=True)
    (site / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(h, w, 3) if rgb else (h, w), dtype=np.uint8)
    Image.fromarray(pixels).save(site / "images" / f"{stem}.png")
    mh, mw = mask_size or size
    mask = np.zeros((mh, mw), dtype=np.uint8)
    mask[mh // 4 : mh // 2, mw // 4 : mw // 2] = label
    Image.fromarray(mask).save(site / "masks" / f"{stem}.png")


def write_metadata(site: Path, rows: Sequence[dict[str, str]]) -> None:
    with (site / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_png_site(site: Path, n_groups: int, per_group: int = 1, **kw: object) -> None:
    rows = []
    for g in range(n_groups):
        for k in range(per_group):
            stem = f"img_{g:02d}_{k}"
            write_png_case(site, stem, seed=g * 10 + k, **kw)  # type: ignore[arg-type]
            rows.append({"id": stem, "case": f"p{g}"})
    write_metadata(site, rows)


def affine_for(spacing: Sequence[float]) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def write_nifti_case(site: Path, case: str, shape: tuple[int, int, int] = (8, 6, 4),
                     spacing: tuple[float, float, float] = (1.0, 1.0, 3.0), channels: int = 2,
                     labels: Sequence[int] = (1,), seed: int = 0, fg_size: int = 2) -> None:
    """``images/<case>_000k.nii.gz`` (k < channels) and ``masks/<case>.nii.gz`` (uint8) on one grid."""
    (site / "images").mkdir(parents=True, exist_ok=True)
    (site / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = affine_for(spacing)
    for c in range(channels):
        img = nib.Nifti1Image((rng.random(shape) * 100 + c).astype(np.float32), affine)
        nib.save(img, str(site / "images" / f"{case}_{c:04d}.nii.gz"))
    mask = np.zeros(shape, dtype=np.uint8)
    for i, value in enumerate(labels):
        mask[i : i + fg_size, 1 : 1 + fg_size, 1 : 1 + fg_size] = value
    nib.save(nib.Nifti1Image(mask, affine), str(site / "masks" / f"{case}.nii.gz"))


def write_nifti_site(site: Path, n: int, **kw: object) -> None:
    for i in range(n):
        write_nifti_case(site, f"case{i:02d}", seed=i, **kw)  # type: ignore[arg-type]
