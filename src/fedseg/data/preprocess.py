"""Bring one case onto the dataset's grid and intensity scale, and map predictions back.

Steps (MONAI transforms and nibabel orientation utilities; nothing re-implemented):

1. **Checks**: channel count, image/mask shape and affine agreement, mask values inside the
   label map. All problems of the case are raised together in one :class:`DataError`.
2. **Label remapping** (``data.label_map``, file value -> class index) with ``MapLabelValue``.
3. **Orientation** (``preprocess.orientation``, NIfTI only): ``nibabel.orientations``.
4. **Resampling** with ``Resize`` (images bilinear/trilinear, optional anti-aliasing when
   downsampling; masks nearest). As in nnU-Net, resampling to a target spacing means resizing to
   ``round(shape * spacing / target_spacing)`` voxels (half up) with voxel *edges* aligned
   (``align_corners=False``): the field of view is kept and the recorded spacing is
   ``shape * spacing / new_shape`` (equal to the target when it divides evenly).
5. **Intensity**: per-image, per-channel z-score (``NormalizeIntensity``; optionally over non-zero
   voxels only, for skull-stripped MR) or a CT window to [0, 1] (``ScaleIntensityRange``).
6. **Centred crop/pad** to the target shape (``SpatialCrop``/``BorderPad``, pad value 0 = the
   mean after z-scoring).

:class:`GeometryInfo` records every geometric step, so :func:`restore_geometry` can put a label
map predicted on the preprocessed grid back onto the file's grid (nearest neighbour), ready for
:func:`fedseg.io.write_mask` with the input's affine and header.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import BorderPad, MapLabelValue, NormalizeIntensity, ScaleIntensityRange, SpatialCrop
from nibabel import orientations as _orientations

from fedseg.config import DataConfig
from fedseg.data.resize import resize_array
from fedseg.io import AFFINE_ATOL, DataError, Problem, Volume

__all__ = [
    "GeometryInfo",
    "PreprocessedCase",
    "preprocess_case",
    "restore_geometry",
    "allowed_label_values",
    "check_case",
    "planned_shape",
    "foreground_fraction",
    "resize_case",
]

_MAX_LISTED = 10
nio: Any = _orientations  # untyped module: one Any alias instead of an ignore per call


@dataclass(frozen=True)
class GeometryInfo:
    """How a case's grid was changed (enough to invert it).

    Attributes:
        original_shape: spatial shape of the file.
        original_spacing: mm per axis of the file (PNG: ``data.pixel_spacing`` or 1.0).
        orientation: nibabel orientation array (``[[axis, flip], ...]``) applied to go from the
            file's axes to ``preprocess.orientation``, or ``None``.
        oriented_shape: spatial shape after reorientation (= ``original_shape`` without it).
        resampled_shape: spatial shape after resampling.
        pad_crop: per axis ``(before, after)`` voxels added (> 0) or removed (< 0) after resampling.
        shape: final spatial shape.
        spacing: final mm per axis.
    """

    original_shape: tuple[int, ...]
    original_spacing: tuple[float, ...]
    orientation: tuple[tuple[float, float], ...] | None
    oriented_shape: tuple[int, ...]
    resampled_shape: tuple[int, ...]
    pad_crop: tuple[tuple[int, int], ...]
    shape: tuple[int, ...]
    spacing: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GeometryInfo:
        ornt = raw.get("orientation")
        return cls(
            original_shape=tuple(int(v) for v in raw["original_shape"]),
            original_spacing=tuple(float(v) for v in raw["original_spacing"]),
            orientation=None if ornt is None else tuple((float(a), float(f)) for a, f in ornt),
            oriented_shape=tuple(int(v) for v in raw["oriented_shape"]),
            resampled_shape=tuple(int(v) for v in raw["resampled_shape"]),
            pad_crop=tuple((int(a), int(b)) for a, b in raw["pad_crop"]),
            shape=tuple(int(v) for v in raw["shape"]),
            spacing=tuple(float(v) for v in raw["spacing"]),
        )


@dataclass
class PreprocessedCase:
    """One case on the dataset grid.

    Attributes:
        image: ``(C, *spatial)`` float32, normalised.
        mask: ``(*spatial)`` int64 class indices in ``[0, num_classes)``, or ``None``.
        spacing: mm per spatial axis of the final grid.
        info: what :func:`restore_geometry` needs to go back to the file's grid.
        foreground: fraction of non-background voxels of the input mask on the file's grid
            (``None`` without a mask); the partitioners use it.
    """

    image: np.ndarray
    mask: np.ndarray | None
    spacing: tuple[float, ...]
    info: GeometryInfo
    foreground: float | None = None


def allowed_label_values(cfg: DataConfig) -> list[int]:
    """Mask file values the dataset accepts: the keys of ``label_map``, else ``0..num_classes-1``."""
    if cfg.label_map is not None:
        return sorted(cfg.label_map)
    return list(range(cfg.num_classes))


def _shown(values: Sequence[int]) -> str:
    text = ", ".join(str(v) for v in values[:_MAX_LISTED])
    return text + (f" ... ({len(values)} values)" if len(values) > _MAX_LISTED else "")


def _pixel_spacing(volume: Volume, cfg: DataConfig) -> tuple[float, ...]:
    """File spacing; for files without geometry (2D images) ``data.pixel_spacing`` replaces it."""
    if volume.affine is not None or cfg.pixel_spacing is None:
        return volume.spacing
    if len(cfg.pixel_spacing) != volume.spatial_dims or min(cfg.pixel_spacing) <= 0:
        raise DataError(f"data.pixel_spacing must hold {volume.spatial_dims} positive mm values, got {cfg.pixel_spacing}")
    return tuple(float(v) for v in cfg.pixel_spacing)


def foreground_fraction(mask: np.ndarray, cfg: DataConfig) -> float:
    """Fraction of voxels of a file mask whose class (after ``label_map``) is not background."""
    if mask.size == 0:
        return 0.0
    if cfg.label_map is None:
        return float(np.count_nonzero(mask)) / mask.size
    background = [k for k, v in cfg.label_map.items() if v == 0]
    return 1.0 - float(np.isin(mask, background).sum()) / mask.size


def check_case(image: Volume, mask: Volume | None, cfg: DataConfig) -> list[Problem]:
    """Every problem of one read case: channel count, image/mask shape or affine mismatch, labels
    outside the label map. :func:`preprocess_case` raises exactly these."""
    problems = []
    name = image.paths[0] if image.paths else "image"
    if image.array.shape[0] != cfg.channels:
        problems.append(Problem(str(name), f"{image.array.shape[0]} channel(s), expected {cfg.channels} (data.channels)"))
    if mask is None:
        return problems
    mname = str(mask.paths[0]) if mask.paths else "mask"
    if mask.spatial_shape != image.spatial_shape:
        if image.spatial_dims == 2:
            (ih, iw), (mh, mw) = image.spatial_shape, mask.spatial_shape
            what = f"size mismatch: image {name} is {iw}x{ih} (WxH) but mask {mname} is {mw}x{mh}"
        else:
            what = f"shape mismatch: image {name} is {image.spatial_shape} but mask {mname} is {mask.spatial_shape}"
        problems.append(Problem(mname, what))
    elif image.affine is not None and mask.affine is not None and not np.allclose(
        image.affine, mask.affine, atol=AFFINE_ATOL
    ):
        diff = float(np.abs(image.affine - mask.affine).max())
        problems.append(Problem(mname, f"affine mismatch: mask {mname} and image {name} differ by up to {diff:.4g} "
                                       "mm (they must share the voxel grid)"))
    allowed = allowed_label_values(cfg)
    values = np.unique(mask.array)
    bad = [int(v) for v in values if int(v) not in set(allowed)]
    if bad:
        where = "data.label_map keys" if cfg.label_map is not None else f"data.num_classes={cfg.num_classes}"
        problems.append(Problem(mname, f"mask values {_shown(bad)} are not in the label map [{_shown(allowed)}] "
                                       f"({where})"))
    return problems


def _resize(array: np.ndarray, shape: tuple[int, ...], mode: str, anti_aliasing: bool = False) -> np.ndarray:
    """``(C, *spatial)`` -> ``(C, *shape)``: MONAI ``Resize``'s values (edges aligned), without its
    MetaTensor bookkeeping, which cost more than the resize of a 2D image (:mod:`fedseg.data.resize`)."""
    return resize_array(array, shape, mode, anti_aliasing)


def resize_case(image: np.ndarray, mask: np.ndarray | None, shape: Sequence[int], anti_aliasing: bool) -> tuple[
    np.ndarray, np.ndarray | None
]:
    """Resize an image ``(C, *spatial)`` (bi/trilinear) and its label map(s) ``([K,] *spatial)`` (nearest) to ``shape``."""
    target = tuple(int(n) for n in shape)
    out = _resize(image, target, "bilinear" if len(target) == 2 else "trilinear", anti_aliasing).astype(np.float32)
    if mask is None:
        return out, None
    stacked = mask.ndim == len(target) + 1
    maps = mask if stacked else mask[None]
    if tuple(maps.shape[1:]) == target:
        return out, mask
    labels = np.rint(_resize(maps.astype(np.float32), target, "nearest-exact")).astype(np.int64)
    return out, labels if stacked else labels[0]


def _pad_crop(array: np.ndarray, pad_crop: Sequence[tuple[int, int]]) -> np.ndarray:
    """Apply per-axis ``(before, after)`` (> 0 pad with 0, < 0 crop) to ``(C, *spatial)``."""
    if all(b == 0 and a == 0 for b, a in pad_crop):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if any(b < 0 or a < 0 for b, a in pad_crop):
        start = [max(-b, 0) for b, _ in pad_crop]
        end = [n - max(-a, 0) for n, (_, a) in zip(array.shape[1:], pad_crop)]
        tensor = torch.as_tensor(SpatialCrop(roi_start=start, roi_end=end)(tensor))
    if any(b > 0 or a > 0 for b, a in pad_crop):
        border = [v for b, a in pad_crop for v in (max(b, 0), max(a, 0))]
        tensor = torch.as_tensor(BorderPad(spatial_border=border, mode="constant", value=0)(tensor))
    return np.asarray(tensor.numpy())


def _plan_pad_crop(shape: Sequence[int], target: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Centred: the extra half voxel of an odd difference goes after."""
    plan = []
    for n, t in zip(shape, target):
        diff = t - n
        before = diff // 2 if diff >= 0 else -((-diff) // 2)
        plan.append((before, diff - before))
    return tuple(plan)


def _reorient(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply a nibabel orientation transform to the spatial axes of ``(C, *spatial)``."""
    moved = np.moveaxis(array, 0, -1)  # nibabel reorients the leading axes
    return np.ascontiguousarray(np.moveaxis(nio.apply_orientation(moved, ornt), -1, 0))


def _geometry_plan(
    shape: tuple[int, ...], spacing: tuple[float, ...], cfg: DataConfig
) -> tuple[tuple[int, ...], tuple[float, ...], tuple[tuple[int, int], ...], tuple[int, ...]]:
    """``(resampled_shape, resampled_spacing, pad_crop, final_shape)`` for a grid after orientation."""
    dims = len(shape)
    pre = cfg.preprocess
    target_shape = cfg.target_shape()
    for key, value in (("preprocess.target_spacing", pre.target_spacing), ("target shape", target_shape)):
        if value is not None and len(value) != dims:
            raise DataError(f"data.{key} has {len(value)} values but the data is {dims}-D ({list(shape)})")
    if pre.target_spacing is not None:
        # half up, not Python's round-half-even: 5 voxels of 1 mm at 2 mm -> 3 voxels
        resampled = tuple(max(1, math.floor(n * s / t + 0.5)) for n, s, t in zip(shape, spacing, pre.target_spacing))
        final = tuple(int(v) for v in target_shape) if target_shape is not None else resampled
    elif target_shape is not None:
        resampled = final = tuple(int(v) for v in target_shape)
    else:
        resampled = final = shape
    new_spacing = tuple(float(s) if n == r else float(s) * n / r for s, n, r in zip(spacing, shape, resampled))
    return resampled, new_spacing, _plan_pad_crop(resampled, final), final


def _orientation(image: Volume, cfg: DataConfig) -> np.ndarray | None:
    """The nibabel transform from the file's axes to ``preprocess.orientation`` (None: nothing to do)."""
    if cfg.preprocess.orientation is None or image.affine is None or image.spatial_dims != 3:
        return None
    ornt = nio.ornt_transform(nio.io_orientation(image.affine), nio.axcodes2ornt(tuple(cfg.preprocess.orientation)))
    return None if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]) else np.asarray(ornt)


def _permute(values: Sequence[float], ornt: np.ndarray | None) -> tuple[float, ...]:
    """Per-axis values (spacing, shape) in the reoriented axis order."""
    if ornt is None:
        return tuple(values)
    out = [0.0] * len(values)
    for axis, (new_axis, _) in enumerate(ornt):
        out[int(new_axis)] = values[axis]
    return tuple(out)


def planned_shape(image: Volume, cfg: DataConfig) -> tuple[int, ...]:
    """The final spatial shape :func:`preprocess_case` would give ``image``, without resampling."""
    ornt = _orientation(image, cfg)
    shape = tuple(int(n) for n in _permute(image.spatial_shape, ornt))
    return _geometry_plan(shape, _permute(_pixel_spacing(image, cfg), ornt), cfg)[3]


def _normalize(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    pre = cfg.preprocess
    tensor = torch.tensor(image)  # a copy: NormalizeIntensity writes into its input
    if pre.normalize == "zscore":
        out = NormalizeIntensity(channel_wise=True)(tensor)
    elif pre.normalize == "zscore_nonzero":
        out = NormalizeIntensity(nonzero=True, channel_wise=True)(tensor)
    elif pre.normalize == "ct":
        low, high = pre.ct_window or (0.0, 1.0)
        out = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(tensor)
    else:
        return image
    return np.asarray(torch.as_tensor(out).numpy(), dtype=np.float32)


def preprocess_case(image: Volume, mask: Volume | None, cfg: DataConfig) -> PreprocessedCase:
    """Check, remap, reorient, resample, normalise and crop/pad one case.

    Args:
        image: from :func:`fedseg.io.read_image` called with ``channels=cfg.channels`` (so a grey
            file becomes RGB or back as the dataset expects), ``(C, *spatial)``.
        mask: from :func:`fedseg.io.read_mask` on the same grid, or ``None`` (prediction).
        cfg: the dataset spec: ``channels``, ``label_map``/``num_classes``, ``pixel_spacing`` and
            ``preprocess`` (``image_size`` counts as ``preprocess.target_shape``).

    Returns:
        The case on the dataset grid (see :class:`PreprocessedCase`).

    Raises:
        DataError: every problem of the case at once (channel count, image/mask shape or affine
            mismatch, mask values outside the label map, a target of the wrong dimension).
    """
    problems = check_case(image, mask, cfg)
    if problems:
        raise DataError("\n".join(str(p) for p in problems), problems)
    spacing = _pixel_spacing(image, cfg)
    arr = image.array.astype(np.float32, copy=False)
    labels = None
    if mask is not None:
        labels = mask.array[None].astype(np.int64, copy=False)
        if cfg.label_map is not None:
            keys = sorted(cfg.label_map)
            labels = np.asarray(
                MapLabelValue(orig_labels=keys, target_labels=[cfg.label_map[k] for k in keys], dtype=np.int64)(labels)
            )
    original_shape = image.spatial_shape
    ornt = _orientation(image, cfg)
    if ornt is not None:
        arr = _reorient(arr, ornt)
        labels = _reorient(labels, ornt) if labels is not None else None
        spacing = _permute(spacing, ornt)
    oriented_shape = tuple(int(n) for n in arr.shape[1:])
    resampled, new_spacing, pad_crop, final = _geometry_plan(oriented_shape, spacing, cfg)
    dims = len(oriented_shape)
    arr = _resize(arr, resampled, "bilinear" if dims == 2 else "trilinear", cfg.preprocess.anti_aliasing)
    arr = _normalize(arr, cfg)
    arr = _pad_crop(arr, pad_crop)
    if labels is not None:
        labels = np.rint(_resize(labels.astype(np.float32), resampled, "nearest-exact")).astype(np.int64) \
            if resampled != oriented_shape else labels
        labels = _pad_crop(labels, pad_crop).astype(np.int64, copy=False)
    info = GeometryInfo(
        original_shape=original_shape,
        original_spacing=tuple(float(s) for s in _pixel_spacing(image, cfg)),
        orientation=None if ornt is None else tuple((float(a), float(f)) for a, f in ornt),
        oriented_shape=oriented_shape,
        resampled_shape=resampled,
        pad_crop=pad_crop,
        shape=final,
        spacing=new_spacing,
    )
    image_out = np.ascontiguousarray(arr, dtype=np.float32)
    mask_out = None if labels is None else np.ascontiguousarray(labels[0])
    # never hand back a view of the caller's arrays (identity steps pass them through)
    if np.shares_memory(image_out, image.array):
        image_out = image_out.copy()
    if mask_out is not None and mask is not None and np.shares_memory(mask_out, mask.array):
        mask_out = mask_out.copy()
    return PreprocessedCase(
        image=image_out,
        mask=mask_out,
        spacing=new_spacing,
        info=info,
        foreground=None if mask is None else foreground_fraction(mask.array, cfg),
    )


def restore_geometry(label_map: np.ndarray, info: GeometryInfo) -> np.ndarray:
    """Put a label map from the preprocessed grid back onto the file's grid.

    Undoes the crop/pad (cropped borders come back as 0 = background), the resampling (nearest
    neighbour) and the reorientation, in reverse order.

    Args:
        label_map: ``(*info.shape)`` integer class indices.
        info: the case's :attr:`PreprocessedCase.info`.

    Returns:
        ``(*info.original_shape)`` int64, aligned voxel for voxel with the input file.

    Raises:
        DataError: ``label_map`` does not have the preprocessed shape.
    """
    labels = np.asarray(label_map)
    if tuple(labels.shape) != tuple(info.shape):
        raise DataError(f"restore_geometry: label map of shape {tuple(labels.shape)}, expected {tuple(info.shape)}")
    arr = labels[None].astype(np.int64, copy=False)
    arr = _pad_crop(arr, [(-b, -a) for b, a in info.pad_crop])
    if tuple(info.resampled_shape) != tuple(info.oriented_shape):
        arr = np.rint(_resize(arr.astype(np.float32), tuple(info.oriented_shape), "nearest-exact")).astype(np.int64)
    if info.orientation is not None:
        forward = np.asarray(info.orientation, dtype=np.float64)
        identity = np.column_stack([np.arange(len(forward)), np.ones(len(forward))])
        arr = _reorient(arr, nio.ornt_transform(identity, forward))
    return np.ascontiguousarray(arr[0], dtype=np.int64)
