"""Dataset fingerprints that merge exactly: what a site tells the planner about its training data.

nnU-Net plans from a fingerprint of the whole dataset: every case's spacing and shape, and
foreground intensities sampled from every case
(*MIC-DKFZ/nnUNet: nnunetv2/experiment_planning/dataset_fingerprint/fingerprint_extractor.py*).
In a federation each site computes a :class:`Fingerprint` of its own training cases and only that
leaves the site; the server sums them (:func:`merge`). Every field is a count, a sum, or a
histogram over fixed, public bins, so the merged fingerprint of several sites equals the
fingerprint of their pooled cases (exactly for counts and histograms; sums up to float rounding):

* ``spacing[a]``: spacing of axis ``a`` in micrometres (mm rounded to 1e-3) -> number of cases;
* ``shape[a]``: voxels along axis ``a`` -> number of cases;
* ``extent[a]``: ``shape * spacing`` along axis ``a`` in micrometres -> number of cases (the median
  shape after resampling is a median of ``round(extent / target)``, nnU-Net's ``compute_new_shape``);
* ``crop_size``: relative size of the non-zero bounding box, in 1e-4 units -> cases (nnU-Net's
  ``median_relative_size_after_cropping``, which decides z-score inside the non-zero mask);
* ``intensity[c]``: foreground voxels (mask > 0) of channel ``c`` per unit-width intensity bin
  ``[k, k+1)`` over ``[INTENSITY_LOW, INTENSITY_HIGH)`` (values outside are clamped into the end
  bins), plus exact count / sum / sum of squares / min / max: exact percentiles for integer data
  (CT in HU), to one intensity unit otherwise;
* ``class_voxels[k]``: voxels of class ``k`` (after ``label_map``);
* ``modalities``: modality -> number of sites; ``num_cases``.

Nothing here is per case: maps are keyed by a value, never by a case, and hold counts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PlanError",
    "INTENSITY_LOW",
    "INTENSITY_HIGH",
    "Fingerprint",
    "case_fingerprint",
    "merge",
    "add_noise",
    "percentile_of_counts",
    "median_of_counts",
]

INTENSITY_LOW = -4096
"""Lower edge of the first intensity bin (below CT's -1024 HU air, with room for padding values)."""
INTENSITY_HIGH = 65536
"""Upper edge of the last intensity bin (16-bit MR scanners' range)."""



class PlanError(ValueError):
    """Planning cannot proceed: the message names the site, key or file and what is allowed."""


_SPACING_UNIT = 1000  # micrometres per mm: spacings are keyed to 1e-3 mm
_CROP_UNIT = 10000


def _counter_dict(raw: Mapping[Any, Any]) -> dict[int, int]:
    return {int(k): int(v) for k, v in raw.items() if int(v) != 0}


@dataclass
class Fingerprint:
    """Mergeable statistics of a set of training cases (see the module docstring for each field)."""

    spatial_dims: int
    channels: int
    num_classes: int
    num_cases: int = 0
    spacing: list[dict[int, int]] = field(default_factory=list)
    shape: list[dict[int, int]] = field(default_factory=list)
    extent: list[dict[int, int]] = field(default_factory=list)
    crop_size: dict[int, int] = field(default_factory=dict)
    intensity: list[dict[int, int]] = field(default_factory=list)
    intensity_count: list[int] = field(default_factory=list)
    intensity_sum: list[float] = field(default_factory=list)
    intensity_sumsq: list[float] = field(default_factory=list)
    intensity_min: list[float] = field(default_factory=list)
    intensity_max: list[float] = field(default_factory=list)
    class_voxels: list[int] = field(default_factory=list)
    modalities: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d, c = self.spatial_dims, self.channels
        for name, n in (("spacing", d), ("shape", d), ("extent", d), ("intensity", c)):
            if not getattr(self, name):
                setattr(self, name, [{} for _ in range(n)])
        for name, value in (("intensity_count", 0), ("intensity_sum", 0.0), ("intensity_sumsq", 0.0),
                            ("intensity_min", math.inf), ("intensity_max", -math.inf)):
            if not getattr(self, name):
                setattr(self, name, [value] * c)
        if not self.class_voxels:
            self.class_voxels = [0] * self.num_classes

    # ------------------------------------------------------------------ derived statistics
    def spacings_mm(self, axis: int) -> tuple[list[float], list[int]]:
        """Distinct spacings of ``axis`` in mm (sorted) and how many cases have each."""
        keys = sorted(self.spacing[axis])
        return [k / _SPACING_UNIT for k in keys], [self.spacing[axis][k] for k in keys]

    def intensity_mean_std(self, channel: int) -> tuple[float, float]:
        """Mean and (population) standard deviation of the channel's foreground voxels."""
        n = self.intensity_count[channel]
        if n == 0:
            return math.nan, math.nan
        mean = self.intensity_sum[channel] / n
        var = max(self.intensity_sumsq[channel] / n - mean * mean, 0.0)
        return mean, math.sqrt(var)

    def intensity_percentile(self, channel: int, q: float) -> float:
        """``np.percentile(foreground voxels, q)`` (linear) from the unit-bin histogram."""
        keys = sorted(self.intensity[channel])
        return percentile_of_counts([float(k) for k in keys], [self.intensity[channel][k] for k in keys], q)

    def median_crop_size(self) -> float:
        """Median relative size of the non-zero bounding box (1.0 when nothing was cropped)."""
        keys = sorted(self.crop_size)
        if not keys:
            return 1.0
        return median_of_counts([k / _CROP_UNIT for k in keys], [self.crop_size[k] for k in keys])

    def class_fractions(self) -> list[float]:
        total = sum(self.class_voxels)
        return [v / total if total else math.nan for v in self.class_voxels]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready: value->count maps become sorted ``[value, count]`` pairs."""
        def pairs(m: Mapping[int, int]) -> list[list[int]]:
            return [[int(k), int(m[k])] for k in sorted(m)]

        return {
            "spatial_dims": self.spatial_dims, "channels": self.channels, "num_classes": self.num_classes,
            "num_cases": self.num_cases,
            "spacing_um": [pairs(m) for m in self.spacing], "shape": [pairs(m) for m in self.shape],
            "extent_um": [pairs(m) for m in self.extent], "crop_size_1e4": pairs(self.crop_size),
            "intensity_bins": [pairs(m) for m in self.intensity],
            "intensity_count": list(self.intensity_count), "intensity_sum": list(self.intensity_sum),
            "intensity_sumsq": list(self.intensity_sumsq),
            "intensity_min": [float(v) for v in self.intensity_min],
            "intensity_max": [float(v) for v in self.intensity_max],
            "class_voxels": list(self.class_voxels), "modalities": dict(sorted(self.modalities.items())),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Fingerprint:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: a key is missing or a value has the wrong form (names the key).
        """
        try:
            def maps(key: str) -> list[dict[int, int]]:
                return [_counter_dict(dict(p)) for p in raw[key]]

            return cls(
                spatial_dims=int(raw["spatial_dims"]), channels=int(raw["channels"]),
                num_classes=int(raw["num_classes"]), num_cases=int(raw["num_cases"]),
                spacing=maps("spacing_um"), shape=maps("shape"), extent=maps("extent_um"),
                crop_size=_counter_dict(dict(raw["crop_size_1e4"])), intensity=maps("intensity_bins"),
                intensity_count=[int(v) for v in raw["intensity_count"]],
                intensity_sum=[float(v) for v in raw["intensity_sum"]],
                intensity_sumsq=[float(v) for v in raw["intensity_sumsq"]],
                intensity_min=[float(v) for v in raw["intensity_min"]],
                intensity_max=[float(v) for v in raw["intensity_max"]],
                class_voxels=[int(v) for v in raw["class_voxels"]],
                modalities={str(k): int(v) for k, v in dict(raw["modalities"]).items()},
            )
        except KeyError as exc:
            raise ValueError(f"fingerprint: missing key {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"fingerprint: malformed value ({exc})") from None


def _bbox_fraction(image: np.ndarray) -> float:
    """Relative size of the bounding box of voxels non-zero in any channel (nnU-Net's crop)."""
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        return 1.0
    size = 1
    for axis in range(nonzero.ndim):
        hits = np.flatnonzero(np.any(nonzero, axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        size *= int(hits[-1] - hits[0] + 1)
    return float(size / int(nonzero.size))


def case_fingerprint(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float], num_classes: int,
                     modality: str | None = None) -> Fingerprint:
    """The fingerprint of one case on its file grid (before resampling).

    Args:
        image: ``(C, *spatial)`` intensities as stored (no normalisation).
        mask: ``(*spatial)`` class indices in ``[0, num_classes)`` (after ``label_map``).
        spacing: mm per spatial axis.
        num_classes: classes including background.
        modality: informative; counted once per site by :func:`site_fingerprint_of`.

    Raises:
        ValueError: image and mask grids differ, or the spacing has the wrong length.
    """
    spatial = tuple(int(n) for n in image.shape[1:])
    if tuple(mask.shape) != spatial or len(spacing) != len(spatial):
        raise ValueError(f"image {spatial}, mask {tuple(mask.shape)} and spacing {list(spacing)} disagree")
    fp = Fingerprint(len(spatial), int(image.shape[0]), num_classes, num_cases=1)
    for a, (n, s) in enumerate(zip(spatial, spacing, strict=True)):
        um = int(round(float(s) * _SPACING_UNIT))
        fp.spacing[a] = {um: 1}
        fp.shape[a] = {n: 1}
        fp.extent[a] = {um * n: 1}
    fp.crop_size = {int(round(_bbox_fraction(image) * _CROP_UNIT)): 1}
    foreground = mask > 0
    for c in range(fp.channels):
        values = np.asarray(image[c][foreground], dtype=np.float64)
        if values.size == 0:
            continue
        bins = np.clip(np.floor(values), INTENSITY_LOW, INTENSITY_HIGH - 1).astype(np.int64)
        keys, counts = np.unique(bins, return_counts=True)
        fp.intensity[c] = {int(k): int(v) for k, v in zip(keys, counts, strict=True)}
        fp.intensity_count[c] = int(values.size)
        fp.intensity_sum[c] = float(values.sum())
        fp.intensity_sumsq[c] = float(np.square(values).sum())
        fp.intensity_min[c] = float(values.min())
        fp.intensity_max[c] = float(values.max())
    fp.class_voxels = [int(v) for v in np.bincount(mask.ravel().astype(np.int64), minlength=num_classes)[:num_classes]]
    if modality:
        fp.modalities = {modality: 1}
    return fp


def _add(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    out = Counter(a)
    out.update(b)
    return {k: v for k, v in out.items() if v != 0}


def merge(fingerprints: Iterable[Fingerprint]) -> Fingerprint:
    """Sum of fingerprints (order does not matter).

    Raises:
        ValueError: none given, or they disagree on dimensions, channels or classes.
    """
    items = list(fingerprints)
    if not items:
        raise ValueError("merge needs at least one fingerprint")
    first = items[0]
    layout = (first.spatial_dims, first.channels, first.num_classes)
    for fp in items[1:]:
        if (fp.spatial_dims, fp.channels, fp.num_classes) != layout:
            raise ValueError(f"fingerprints disagree: (spatial_dims, channels, num_classes) {layout} vs "
                             f"{(fp.spatial_dims, fp.channels, fp.num_classes)}")
    out = Fingerprint(*layout)
    for fp in items:
        out.num_cases += fp.num_cases
        for a in range(out.spatial_dims):
            out.spacing[a] = _add(out.spacing[a], fp.spacing[a])
            out.shape[a] = _add(out.shape[a], fp.shape[a])
            out.extent[a] = _add(out.extent[a], fp.extent[a])
        out.crop_size = _add(out.crop_size, fp.crop_size)
        for c in range(out.channels):
            out.intensity[c] = _add(out.intensity[c], fp.intensity[c])
            out.intensity_count[c] += fp.intensity_count[c]
            out.intensity_sum[c] += fp.intensity_sum[c]
            out.intensity_sumsq[c] += fp.intensity_sumsq[c]
            out.intensity_min[c] = min(out.intensity_min[c], fp.intensity_min[c])
            out.intensity_max[c] = max(out.intensity_max[c], fp.intensity_max[c])
        out.class_voxels = [x + y for x, y in zip(out.class_voxels, fp.class_voxels, strict=True)]
        out.modalities = dict(Counter(out.modalities) + Counter(fp.modalities))
    return out


def add_noise(fp: Fingerprint, epsilon: float, rng: np.random.Generator) -> Fingerprint:
    """Laplace noise on the case counts of a site's fingerprint (``plan.dp_epsilon``).

    One case changes ``num_cases``, one entry of each of the ``spacing``, ``shape``, ``extent``
    maps and of ``crop_size`` by 1: L1 sensitivity ``3 * dims + 2``, so each count gets
    ``Laplace(0, (3 * dims + 2) / epsilon)``, rounded and clipped at 0 (post-processing). This
    hides how many cases share a value; it does not hide which values occur (the keys), nor the
    voxel-level statistics (intensity histogram, class voxels, sums), whose sensitivity is a
    whole case's voxel count (see docs/planning.md).

    Raises:
        ValueError: ``epsilon`` is not positive.
    """
    if not epsilon > 0:
        raise ValueError(f"plan.dp_epsilon must be > 0, got {epsilon}")
    scale = (3 * fp.spatial_dims + 2) / epsilon

    def noisy(m: Mapping[int, int]) -> dict[int, int]:
        out = {k: max(0, int(round(v + rng.laplace(0.0, scale)))) for k, v in sorted(m.items())}
        return {k: v for k, v in out.items() if v > 0}

    out = Fingerprint.from_dict(fp.to_dict())
    out.num_cases = max(1, int(round(fp.num_cases + rng.laplace(0.0, scale))))
    out.spacing = [noisy(m) for m in fp.spacing]
    out.shape = [noisy(m) for m in fp.shape]
    out.extent = [noisy(m) for m in fp.extent]
    out.crop_size = noisy(fp.crop_size)
    return out


def percentile_of_counts(values: Sequence[float], counts: Sequence[int], q: float) -> float:
    """``np.percentile`` (linear interpolation) of the multiset with ``counts[i]`` copies of the
    sorted ``values[i]``, without expanding it.

    Raises:
        ValueError: no values (all counts 0).
    """
    total = int(sum(counts))
    if total <= 0:
        raise ValueError("percentile of an empty distribution")
    position = q / 100.0 * (total - 1)
    lo, hi = math.floor(position), math.ceil(position)
    cumulative = np.cumsum(np.asarray(counts, dtype=np.int64))

    def at(index: int) -> float:
        return float(values[int(np.searchsorted(cumulative, index, side="right"))])

    low = at(lo)
    return low + (position - lo) * (at(hi) - low) if hi != lo else low


def median_of_counts(values: Sequence[float], counts: Sequence[int]) -> float:
    """``np.median`` of the multiset (see :func:`percentile_of_counts`)."""
    return percentile_of_counts(values, counts, 50.0)
