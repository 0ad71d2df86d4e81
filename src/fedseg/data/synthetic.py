"""Deterministic synthetic multi-site segmentation data, 2D and 3D.

Every site is one simulated scanner imaging the same kind of anatomy: smooth tissue-like
background with lesion-like blobs. Sites differ the way scanners do, so federated methods
face a real (if mild) domain shift, yet every site is learnable.

Geometry (per image, independent of the site except for voxel spacing):

* 1 blob (65 %) or 2 blobs (35 %); each blob is a randomly rotated ellipse/ellipsoid
  (axis ratios 0.6-1.0) whose radius is perturbed smoothly along the direction,
  ``r(u) = 1 + sum_j a_j sin(k_j <w_j, u> + phi_j)`` with 3 terms, ``a_j`` in [0, 0.12],
  ``k_j`` in [1.5, 4].
* Lesion size is drawn in millimetres, so a site with finer spacing sees larger lesions in
  voxels: the fraction of foreground voxels is ``f_ref / s_inplane**2`` with ``f_ref``
  log-uniform in [0.04, 0.16] (2D) or [0.04, 0.12] (3D), clipped to [0.035, 0.22]
  (overlapping blobs and the perturbation make the realised fraction about 2-25 %).
* Classes: 1 = lesion; with ``num_classes >= 3`` a nested core (0.45-0.65 of the lesion
  radius) is class 2; with ``num_classes == 4`` an inner core (0.35-0.55 of the core radius)
  is class 3. Every image has a non-empty foreground (blob centres lie on a voxel).

Intensity model (per image, before the site's scanner effects; roughly in [0, 1]):
``tissue = 0.45 + 0.12 * low-frequency field + 0.05 * mid-frequency field``, plus
``contrast * offset[class]`` with offsets (0, 1.0, 1.8, 0.55) and a fine speckle texture of
amplitude 0.06 inside the lesion only.

Scanner effects per site, applied in this order: gamma curve, smooth multiplicative bias
field ``exp(bias * very-low-frequency field)``, Gaussian blur, additive Gaussian noise,
then per-image z-score. Site ``i`` of ``N`` gets, from a golden-ratio spread over ``i``
plus a seed-dependent jitter of +-5 % of the range (so sites always differ):

=============  ===================  ===============================================
parameter      range                site0 / site1 / site2 of 3 sites at seed 0
=============  ===================  ===============================================
gamma          [0.7, 1.5]           0.79 / 1.30 / 0.93
contrast       [0.20, 0.45]         0.34 / 0.24 / 0.39
noise (std)    [0.02, 0.10]         0.086 / 0.056 / 0.020
blur (sigma)   [0.0, 1.2] voxels    0.47 / 1.12 / 0.72
bias           [0.05, 0.35]         0.25 / 0.12 / 0.31
=============  ===================  ===============================================

Voxel spacing (mm) does not depend on the seed. In-plane spacing cycles through
(1.0, 0.8, 1.2, 0.9, 1.1, 0.7, 1.3, 0.85, 1.15, 0.75); 3D volumes are anisotropic with the
last axis the slice axis, cycling through (2.5, 1.0, 3.0, 2.0, 1.5). So 2D: site0 (1.0, 1.0),
site1 (0.8, 0.8), site2 (1.2, 1.2); 3D: site0 (1.0, 1.0, 2.5), site1 (0.8, 0.8, 1.0),
site2 (1.2, 1.2, 3.0).

Site sizes: ``samples_per_site`` or, by default, a geometric ramp from 48 down to 20 images
(2D) or from 16 down to 8 volumes (3D) over the sites, e.g. [48, 31, 20] and [16, 11, 8]
for 3 sites.

Randomness: site ``i`` draws its images from ``numpy.random.default_rng([seed, i, 0])``,
its split from ``[seed, i, 1]`` and its parameter jitter from ``[seed, i, 2]``, so the same
seed gives bit-identical output and changing the number of images of one site does not
change another site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from fedseg.config import SplitConfig, SyntheticDataConfig
from fedseg.data.base import DataError, FederatedData, SegmentationSet, SiteData
from fedseg.data.folder import split_counts

__all__ = [
    "SiteParams",
    "SYNTHETIC_LABEL_NAMES",
    "default_samples_per_site",
    "site_parameters",
    "generate_site",
    "make_synthetic_federation",
]

SYNTHETIC_LABEL_NAMES = ["background", "lesion", "core", "inner_core"]

_GOLDEN = 0.6180339887498949
_INPLANE_SPACING = (1.0, 0.8, 1.2, 0.9, 1.1, 0.7, 1.3, 0.85, 1.15, 0.75)
_SLICE_SPACING = (2.5, 1.0, 3.0, 2.0, 1.5)
# (low, high, golden-ratio offset) per scanner parameter.
_RANGES = {
    "gamma": (0.7, 1.5, 0.10),
    "contrast": (0.20, 0.45, 0.55),
    "noise": (0.02, 0.10, 0.80),
    "blur": (0.0, 1.2, 0.35),
    "bias": (0.05, 0.35, 0.65),
}
_CLASS_OFFSET = np.array([0.0, 1.0, 1.8, 0.55], dtype=np.float32)
_MASK64 = (1 << 63) - 1


@dataclass(frozen=True)
class SiteParams:
    """Scanner parameters of one synthetic site.

    Attributes:
        name: ``site<i>``.
        spacing: mm per voxel along each spatial axis.
        gamma: exponent of the intensity curve applied to the [0, 1] image.
        contrast: lesion-minus-tissue intensity step (before gamma).
        noise: std of the additive Gaussian noise (image range about [0, 1]).
        blur: Gaussian blur sigma in voxels (0 = none).
        bias: strength of the smooth multiplicative bias field.
        num_samples: images (2D) or volumes (3D) of this site.
    """

    name: str
    spacing: tuple[float, ...]
    gamma: float
    contrast: float
    noise: float
    blur: float
    bias: float
    num_samples: int


def _seed_word(seed: int) -> int:
    """Map any Python int (negative included) to a non-negative SeedSequence word."""
    return int(seed) & _MASK64


def default_samples_per_site(num_sites: int, spatial_dims: int) -> list[int]:
    """Imbalanced geometric ramp of site sizes.

    Args:
        num_sites: number of sites, >= 1.
        spatial_dims: 2 or 3.

    Returns:
        From 48 down to 20 (2D) or 16 down to 8 (3D), e.g. ``[48, 31, 20]`` for 3 sites in 2D.
    """
    hi, lo = (48, 20) if spatial_dims == 2 else (16, 8)
    if num_sites == 1:
        return [hi]
    return [int(round(hi * (lo / hi) ** (i / (num_sites - 1)))) for i in range(num_sites)]


def _spacing(index: int, spatial_dims: int) -> tuple[float, ...]:
    if index < len(_INPLANE_SPACING):
        inplane = _INPLANE_SPACING[index]
    else:
        inplane = round(0.7 + 0.6 * ((index * _GOLDEN) % 1.0), 3)
    if spatial_dims == 2:
        return (inplane, inplane)
    if index < len(_SLICE_SPACING):
        through = _SLICE_SPACING[index]
    else:
        through = round(1.0 + 2.0 * ((0.3 + index * _GOLDEN) % 1.0), 3)
    return (inplane, inplane, through)


def site_parameters(cfg: SyntheticDataConfig, seed: int) -> list[SiteParams]:
    """Per-site scanner parameters, deterministic in ``seed`` and the site index.

    Args:
        cfg: the synthetic data section of the config.
        seed: run seed.

    Returns:
        One :class:`SiteParams` per site, ``site0`` first.

    Raises:
        DataError: ``samples_per_site`` has the wrong length or a value below 1.
    """
    n = cfg.num_sites
    if cfg.samples_per_site is None:
        sizes = default_samples_per_site(n, cfg.spatial_dims)
    else:
        sizes = list(cfg.samples_per_site)
        if len(sizes) != n:
            raise DataError(
                f"data.synthetic.samples_per_site has {len(sizes)} entries but num_sites is {n}; "
                f"give one count per site or leave it unset for the default ramp"
            )
        bad = [s for s in sizes if s < 1]
        if bad:
            raise DataError(f"data.synthetic.samples_per_site must be >= 1 per site, got {sizes}")
    params = []
    for i in range(n):
        rng = np.random.default_rng([_seed_word(seed), i, 2])
        values = {}
        for key, (lo, hi, offset) in _RANGES.items():
            u = (offset + i * _GOLDEN) % 1.0 + rng.uniform(-0.05, 0.05)
            values[key] = float(lo + (hi - lo) * min(max(u, 0.0), 1.0))
        params.append(
            SiteParams(
                name=f"site{i}",
                spacing=_spacing(i, cfg.spatial_dims),
                num_samples=int(sizes[i]),
                **values,
            )
        )
    return params


def _smooth_field(rng: np.random.Generator, n: int, size: int, dims: int, ctrl: int) -> np.ndarray:
    """Random smooth fields ``(n, *[size]*dims)`` float32, zero mean and unit std per field.

    A ``ctrl``-per-axis grid of Gaussian weights is expanded with separable Gaussian radial
    basis functions (a matrix product per axis), so no image mixes with another.
    """
    ctrl = max(2, ctrl)
    centres = np.linspace(-0.5, size - 0.5, ctrl)
    width = (size / (ctrl - 1)) * 0.75
    x = np.arange(size, dtype=np.float64)
    basis = np.exp(-0.5 * ((x[:, None] - centres[None, :]) / width) ** 2).astype(np.float32)
    field = rng.standard_normal((n,) + (ctrl,) * dims, dtype=np.float32)
    for axis in range(1, dims + 1):
        field = np.moveaxis(np.tensordot(field, basis, axes=([axis], [1])), -1, axis)
    flat = field.reshape(n, -1)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= np.maximum(flat.std(axis=1, keepdims=True), 1e-6)
    return flat.reshape(field.shape)


def _random_rotations(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    """``(n, dims, dims)`` random orthogonal matrices (Haar, via QR)."""
    g = rng.standard_normal((n, dims, dims))
    q, r = np.linalg.qr(g)
    rotations: np.ndarray = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return rotations


def _blob_labels(
    rng: np.random.Generator,
    coords: np.ndarray,
    fractions: np.ndarray,
    spacing: np.ndarray,
    size: int,
    num_classes: int,
) -> np.ndarray:
    """Labels ``(n, P)`` of one perturbed, rotated ellipsoid per image.

    Args:
        rng: generator.
        coords: ``(D, P)`` voxel indices of the grid.
        fractions: ``(n,)`` target fraction of foreground voxels.
        spacing: ``(D,)`` mm per voxel.
        size: side length in voxels.
        num_classes: 2..4.
    """
    dims, _ = coords.shape
    n = fractions.shape[0]
    unit_volume = math.pi if dims == 2 else 4.0 * math.pi / 3.0
    volume_mm = fractions * size**dims * float(np.prod(spacing))
    mean_radius = (volume_mm / unit_volume) ** (1.0 / dims)
    ratios = rng.uniform(0.6, 1.0, size=(n, dims))
    ratios /= np.exp(np.log(ratios).mean(axis=1, keepdims=True))
    radii = mean_radius[:, None] * ratios
    radii = np.clip(radii, 1.5 * spacing.max(), 0.4 * size * spacing.min())
    # Centres on voxels: the centre voxel has rho = 0, so the blob is never empty.
    margin = np.minimum(1.2 * radii.max(axis=1, keepdims=True) / spacing[None, :], (size - 1) / 2.0)
    centres = np.round(margin + rng.uniform(0.0, 1.0, size=(n, dims)) * (size - 1 - 2 * margin))
    rot = _random_rotations(rng, n, dims).astype(np.float32)
    spacing32 = spacing.astype(np.float32)
    offsets = (coords[None, :, :] - centres[:, :, None].astype(np.float32)) * spacing32[None, :, None]
    z = np.einsum("ndk,ndp->nkp", rot, offsets) / radii[:, :, None].astype(np.float32)
    rho = np.sqrt(np.einsum("nkp,nkp->np", z, z))
    u = z / np.maximum(rho, 1e-6)[:, None, :]
    terms = 3
    w = rng.standard_normal((n, terms, dims)).astype(np.float32)
    w /= np.linalg.norm(w, axis=2, keepdims=True)
    amp = rng.uniform(0.0, 0.12, size=(n, terms, 1)).astype(np.float32)
    freq = rng.uniform(1.5, 4.0, size=(n, terms, 1)).astype(np.float32)
    phase = rng.uniform(0.0, 2 * math.pi, size=(n, terms, 1)).astype(np.float32)
    radius = 1.0 + (amp * np.sin(freq * np.einsum("ntd,ndp->ntp", w, u) + phase)).sum(axis=1)
    labels: np.ndarray = (rho < radius).astype(np.int64)
    if num_classes >= 3:
        core = rng.uniform(0.45, 0.65, size=(n, 1)).astype(np.float32)
        labels[rho < core * radius] = 2
        if num_classes >= 4:
            inner = core * rng.uniform(0.35, 0.55, size=(n, 1)).astype(np.float32)
            labels[rho < inner * radius] = 3
    return labels


def generate_site(
    params: SiteParams, size: int, spatial_dims: int, num_classes: int, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """All images of one synthetic site.

    Args:
        params: the site's scanner parameters.
        size: side length in voxels.
        spatial_dims: 2 or 3.
        num_classes: 2..4 (background included).
        seed: run seed.
        index: site index (seeds the site's generator with ``[seed, index, 0]``).

    Returns:
        ``images`` ``(N, 1, *spatial)`` float32 z-scored per image and ``masks``
        ``(N, 1, *spatial)`` int64 in ``[0, num_classes)``.
    """
    rng = np.random.default_rng([_seed_word(seed), index, 0])
    n = params.num_samples
    dims = spatial_dims
    shape = (size,) * dims
    spacing = np.asarray(params.spacing, dtype=np.float64)
    grid = np.meshgrid(*[np.arange(size)] * dims, indexing="ij")
    coords = np.stack(grid).reshape(dims, -1).astype(np.float32)

    # Geometry: lesion size drawn in mm, so finer spacing -> larger lesions in voxels.
    lo, hi = (0.04, 0.16) if dims == 2 else (0.04, 0.12)
    f_ref = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))
    total = np.clip(f_ref / spacing[0] ** 2, 0.035, 0.22)
    two = rng.uniform(size=n) < 0.35
    share = np.where(two, rng.uniform(0.55, 0.8, size=n), 1.0)
    labels = _blob_labels(rng, coords, total * share, spacing, size, num_classes)
    rest = np.maximum(total * (1.0 - share), 0.01)
    second = _blob_labels(rng, coords, rest, spacing, size, num_classes)
    labels = np.where(two[:, None], np.maximum(labels, second), labels).reshape((n,) + shape)

    # Anatomy: smooth tissue at two scales plus lesion texture.
    tissue = 0.45 + 0.12 * _smooth_field(rng, n, size, dims, 4)
    tissue += 0.05 * _smooth_field(rng, n, size, dims, max(4, size // 4))
    white = rng.standard_normal((n,) + shape, dtype=np.float32)
    speckle = ndimage.gaussian_filter(white, (0,) + (0.7,) * dims)
    speckle /= max(float(speckle.std()), 1e-6)
    image = tissue + params.contrast * _CLASS_OFFSET[labels] + 0.06 * speckle * (labels > 0)

    # Scanner: gamma, bias field, blur, noise.
    image = (np.clip(image, 0.01, 1.5) / 1.5) ** params.gamma
    image = image * np.exp(params.bias * _smooth_field(rng, n, size, dims, 3))
    if params.blur > 0:
        image = ndimage.gaussian_filter(image, (0,) + (params.blur,) * dims)
    image = image + params.noise * rng.standard_normal(image.shape, dtype=np.float32)

    flat = image.reshape(n, -1).astype(np.float32)
    flat = (flat - flat.mean(axis=1, keepdims=True)) / np.maximum(flat.std(axis=1, keepdims=True), 1e-6)
    return flat.reshape((n, 1) + shape), labels.reshape((n, 1) + shape)


def _subset(
    images: np.ndarray, masks: np.ndarray, spacing: tuple[float, ...], ids: list[str], idx: np.ndarray
) -> SegmentationSet:
    idx = np.sort(idx)
    return SegmentationSet(
        images=torch.from_numpy(np.ascontiguousarray(images[idx])),
        masks=torch.from_numpy(np.ascontiguousarray(masks[idx])),
        spacing=torch.tensor([spacing] * len(idx), dtype=torch.float64).reshape(len(idx), len(spacing)),
        ids=[ids[i] for i in idx],
    )


def make_synthetic_federation(cfg: SyntheticDataConfig, split: SplitConfig, seed: int) -> FederatedData:
    """Generate the synthetic federation described in the module docstring.

    Args:
        cfg: number of sites, dimensionality, size, per-site counts and classes.
        split: train/val/test fractions applied per site (each image is its own group).
        seed: run seed; the same seed gives bit-identical tensors.

    Returns:
        :class:`FederatedData` with sites ``site0..site{N-1}``, one input channel and
        ``cfg.num_classes`` classes. Images ``(N, 1, *spatial)`` float32 z-scored per image,
        masks ``(N, 1, *spatial)`` int64, spacing ``(N, D)`` float64, ids ``site<i>_<jjjj>``.

    Raises:
        DataError: ``samples_per_site`` does not match ``num_sites``.
    """
    sites = []
    for i, params in enumerate(site_parameters(cfg, seed)):
        images, masks = generate_site(params, cfg.size, cfg.spatial_dims, cfg.num_classes, seed, i)
        ids = [f"{params.name}_{j:04d}" for j in range(params.num_samples)]
        n_train, n_val, _ = split_counts(params.num_samples, split)
        order = np.random.default_rng([_seed_word(seed), i, 1]).permutation(params.num_samples)
        parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
        sites.append(
            SiteData(
                name=params.name,
                train=_subset(images, masks, params.spacing, ids, parts[0]),
                val=_subset(images, masks, params.spacing, ids, parts[1]),
                test=_subset(images, masks, params.spacing, ids, parts[2]),
            )
        )
    return FederatedData(
        sites=sites,
        spatial_dims=cfg.spatial_dims,
        in_channels=1,
        num_classes=cfg.num_classes,
        label_names=list(SYNTHETIC_LABEL_NAMES[: cfg.num_classes]),
    )
