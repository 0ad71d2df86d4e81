"""3D volumes fed to a 2D model as slices (``data.slice_axis`` or a site's ``slice_axis``).

A sliced site's volumes are read, checked and preprocessed as 3D cases (the site's
``preprocess``; the on-disk cache holds the volumes), then cut here along the slice axis:

* **which slices**: every slice, or (``slice_keep_empty: f``) every slice whose label map has
  foreground plus ``round(f * n_empty)`` of the empty ones, drawn without replacement by
  ``numpy.random.default_rng([seed, crc32(site), crc32(case)])``, so the choice depends on the run
  seed and the volume only (never on reading order or thread count);
* **grid**: each slice is resized to the federation's 2D target shape (``data.image_size`` /
  ``data.preprocess.target_shape``; bilinear image, nearest label map), its spacing scaled to match;
* **names and groups**: slice ``k`` of case ``c`` is case ``c_slice<k>`` (three digits at least)
  in the volume's group, so the split, which is made by group, keeps every slice of a volume (and of
  a patient) in one split. A split file may list volume ids (all their slices) or slice ids (a
  run's ``splits.json``).

Check mode (``fedseg data check``, no arrays kept) reports a volume as one case with the 2D shape
its slices will have.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import replace

import numpy as np

from fedseg.config import DataConfig
from fedseg.config.site import spec_key
from fedseg.data.base import Problem
from fedseg.data.cache import StoredCase
from fedseg.data.check import CaseSummary
from fedseg.data.layout import SiteIndex
from fedseg.data.preprocess import GeometryInfo, PreprocessedCase, resize_case

__all__ = ["keep_empty_of", "slice_id", "choose_slices", "slice_volume", "slice_case", "expand_slices", "volume_ids_to_slices"]


def keep_empty_of(cfg: DataConfig, site: str) -> float | None:
    """Fraction of empty slices kept for ``site``: its spec's, else ``data.slice_keep_empty`` (None: all)."""
    spec = cfg.site_spec(site)
    if spec is not None and spec.slice_keep_empty is not None:
        return spec.slice_keep_empty
    return cfg.slice_keep_empty


def slice_id(case_id: str, index: int) -> str:
    """The case id of slice ``index`` of a volume."""
    return f"{case_id}_slice{index:03d}"


def choose_slices(has_foreground: np.ndarray, keep_empty: float | None, seed: int, site: str, case_id: str) -> list[int]:
    """Indices of the slices kept, ascending.

    Args:
        has_foreground: ``(S,)`` bool, whether each slice's label map has a non-background voxel.
        keep_empty: fraction of empty slices kept (``None``: every slice).
        seed: run seed.
        site, case_id: name the volume in the draw (stable across processes).
    """
    n = int(has_foreground.shape[0])
    if keep_empty is None:
        return list(range(n))
    empty = np.flatnonzero(~has_foreground)
    count = min(len(empty), math.floor(keep_empty * len(empty) + 0.5))
    rng = np.random.default_rng([int(seed) & ((1 << 63) - 1), zlib.crc32(site.encode("utf-8")),
                                 zlib.crc32(case_id.encode("utf-8"))])
    drawn = rng.choice(empty, size=count, replace=False) if count else np.zeros(0, dtype=np.int64)
    return sorted(int(i) for i in np.concatenate([np.flatnonzero(has_foreground), drawn]))


def slice_volume(case: PreprocessedCase, axis: int, indices: list[int], target: tuple[int, ...] | None,
                 anti_aliasing: bool) -> list[PreprocessedCase]:
    """Slices ``indices`` along spatial ``axis`` of a preprocessed volume, resized to ``target``.

    The kept slices are resized together (stacked as channels: one resize call per volume, the
    same result as slice by slice, since every channel is interpolated on its own).

    Args:
        case: image ``(C, X, Y, Z)`` float32, mask ``(X, Y, Z)`` integer class indices (or None).
        axis: spatial axis (0, 1, 2) of the volume array.
        indices: the slices.
        target: 2D shape to resize to (``None``: keep the volume grid).
        anti_aliasing: smooth the image before downsampling.

    Returns:
        One 2D case ``(C, H, W)`` per index; its :class:`GeometryInfo` maps the slice on the volume grid.
    """
    if not indices:
        return []
    channels = int(case.image.shape[0])
    images = np.take(case.image, indices, axis=axis + 1)  # (C, ..., K, ...)
    images = np.moveaxis(images, axis + 1, 0).reshape(len(indices) * channels, *images.shape[1:axis + 1],
                                                      *images.shape[axis + 2:])
    masks = None if case.mask is None else np.moveaxis(np.take(case.mask, indices, axis=axis), axis, 0)
    spacing = tuple(s for k, s in enumerate(case.spacing) if k != axis)
    shape = tuple(int(n) for n in images.shape[1:])
    final = shape if target is None else tuple(int(n) for n in target)
    if final != shape:
        images, masks = resize_case(images, masks, final, anti_aliasing)
    new_spacing = tuple(float(s) * n / f for s, n, f in zip(spacing, shape, final))
    info = GeometryInfo(original_shape=shape, original_spacing=spacing, orientation=None, oriented_shape=shape,
                        resampled_shape=final, pad_crop=((0, 0),) * len(final), shape=final, spacing=new_spacing)
    out = []
    for k in range(len(indices)):
        image = np.ascontiguousarray(images[k * channels:(k + 1) * channels], dtype=np.float32)
        # int64 class indices whatever the volume's dtype (a cached volume's mask is stored uint8)
        mask = None if masks is None else np.ascontiguousarray(masks[k], dtype=np.int64)
        foreground = None if mask is None else float(np.count_nonzero(mask)) / max(mask.size, 1)
        out.append(PreprocessedCase(image=image, mask=mask, spacing=new_spacing, info=info, foreground=foreground))
    return out


def slice_case(case: PreprocessedCase, axis: int, index: int, target: tuple[int, ...] | None,
               anti_aliasing: bool) -> PreprocessedCase:
    """Slice ``index`` of a volume (:func:`slice_volume` with one index)."""
    return slice_volume(case, axis, [index], target, anti_aliasing)[0]


def expand_slices(summaries: list[CaseSummary], index: list[SiteIndex], cfg: DataConfig, seed: int) -> tuple[
    list[CaseSummary], list[Problem]
]:
    """Replace every volume of a sliced site by its kept slices (order kept; other cases unchanged).

    Args:
        summaries: the cases read (check mode: without arrays).
        index: the site indexes (their ``slice_axis``).
        cfg: the federation's ``data`` section (2D target shape, ``slice_keep_empty``).
        seed: run seed (which empty slices are kept).

    Returns:
        The cases, slices in place of volumes, and the problems (a target shape that is not 2D, a
        weak label read from files on a sliced site).
    """
    axes = {s.name: s.slice_axis for s in index if s.slice_axis is not None}
    if not axes:
        return summaries, []
    target = cfg.target_shape()
    if target is not None and len(target) != 2:
        return [s for s in summaries if s.files.site not in axes], [Problem(
            "data.preprocess.target_shape", f"slices of 3D sites ({', '.join(axes)}) are resized to the 2D target "
            f"shape, but it has {len(target)} values ({target})")]
    out: list[CaseSummary] = []
    problems: list[Problem] = []
    for summary in summaries:
        site = summary.files.site
        axis = axes.get(site)
        if axis is None:
            out.append(summary)
            continue
        if summary.weak is not None:
            problems.append(Problem(str(summary.files.images[0]), f"{spec_key(site)}: weak labels read from files "
                                    "cannot be sliced (use data.weak_labels.source derive)", site))
            continue
        if summary.case is None:  # check mode: one row per volume, with the shape of its slices
            plane = tuple(n for k, n in enumerate(summary.shape) if k != axis)
            out.append(replace(summary, shape=tuple(target) if target is not None else plane))
            continue
        volume = summary.case
        if isinstance(volume, StoredCase):  # cached on disk: slicing needs the values
            volume = volume.materialised()
        if volume.mask is None:
            problems.append(Problem(str(summary.files.images[0]), "a sliced volume needs its mask", site))
            continue
        other = tuple(k for k in range(volume.mask.ndim) if k != axis)
        kept = choose_slices(np.any(volume.mask > 0, axis=other), keep_empty_of(cfg, site), seed, site,
                             summary.files.case_id)
        cut = slice_volume(volume, axis, kept, None if target is None else tuple(target), cfg.preprocess.anti_aliasing)
        for k, case in zip(kept, cut, strict=True):
            files = replace(summary.files, case_id=slice_id(summary.files.case_id, k), volume=summary.files.case_id)
            out.append(CaseSummary(files, case.image.shape[1:], (), case.foreground or 0.0, case))
    return out, problems


def volume_ids_to_slices(parts: dict[str, list[str]], cases: list[CaseSummary]) -> dict[str, list[str]]:
    """A split file's ids of one site with every volume id replaced by the ids of its slices.

    Args:
        parts: split name -> listed case ids (volume or slice ids).
        cases: the site's cases (slices carry their volume in ``files.volume``).

    Returns:
        ``parts`` itself when the site has no slices, else the expanded lists (slice order).
    """
    slices: dict[str, list[str]] = {}
    for c in cases:
        if c.files.volume is not None:
            slices.setdefault(c.files.volume, []).append(c.files.case_id)
    if not slices:
        return parts
    return {k: [s for i in ids for s in slices.get(i, [i])] for k, ids in parts.items()}
