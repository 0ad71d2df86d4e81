"""On-the-fly training augmentation of image/mask batches, batched on the training device.

:class:`BatchAugmenter` applies :class:`fedseg.config.AugmentConfig` to a whole batch at once:
every transform fires independently per sample with its probability, and the per-sample flags
and parameters are drawn from one CPU generator seeded per (run seed, round, client), so a round
replays exactly (a resumed run stays bit-identical). Large random fields (noise, elastic
displacements) come from a second generator on the training device. Transforms whose
probability is 0, or that fire for no sample of the batch, cost nothing.

* Spatial (rotation, scale + translation, elastic) are composed into one sampling grid per
  sample (:func:`torch.nn.functional.affine_grid` plus a displacement field) and applied with one
  :func:`~torch.nn.functional.grid_sample` to the samples where any of them fired: image bilinear,
  mask nearest, zero padding (= background).
* Flips are one :func:`torch.where` over the batch per axis; image and mask move together.
* Intensity (scale, shift, Gaussian noise, gamma with retained mean/std) touch the image only.

The parameters keep the meaning MONAI's transforms give them (``RandRotate``, ``RandAffine``,
``Rand2DElastic``, ``Rand3DElastic``, ``RandFlip``, ``RandScaleIntensity``,
``RandShiftIntensity``, ``RandGaussianNoise`` with a sampled std, ``RandAdjustContrast`` with
``retain_stats``); the random numbers differ from MONAI's per-sample path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedseg.config import AugmentConfig

__all__ = ["BatchAugmenter", "flip_axes"]

_FIELD_SALT = 0x5DEECE66D  # the device generator's seed differs from the flag generator's


def flip_axes(cfg: AugmentConfig, dims: int) -> list[int]:
    """The spatial axes ``cfg`` flips for ``dims``-D samples (all axes by default).

    Raises:
        ValueError: ``dims`` is not 2 or 3, or ``cfg.flip_axes`` names a missing axis.
    """
    if dims not in (2, 3):
        raise ValueError(f"augmentation needs 2 or 3 spatial axes, got {dims}")
    axes = list(range(dims)) if cfg.flip_axes is None else list(cfg.flip_axes)
    bad = [a for a in axes if not 0 <= a < dims]
    if bad:
        raise ValueError(f"train.augment.flip_axes {axes}: axes {bad} do not exist for {dims}D images (0..{dims - 1})")
    return axes


def _rotation(angles: Tensor, dims: int) -> Tensor:
    """``(B, dims, dims)`` rotation matrices (grid axis order x, y[, z]) for ``(B, 1 or 3)`` angles."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    if dims == 2:
        return torch.stack([torch.stack([c[:, 0], -s[:, 0]], 1), torch.stack([s[:, 0], c[:, 0]], 1)], 1)
    rx = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, c[:, 0], -s[:, 0]], 1),
                      torch.stack([zero, s[:, 0], c[:, 0]], 1)], 1)
    ry = torch.stack([torch.stack([c[:, 1], zero, s[:, 1]], 1), torch.stack([zero, one, zero], 1),
                      torch.stack([-s[:, 1], zero, c[:, 1]], 1)], 1)
    rz = torch.stack([torch.stack([c[:, 2], -s[:, 2], zero], 1), torch.stack([s[:, 2], c[:, 2], zero], 1),
                      torch.stack([zero, zero, one], 1)], 1)
    return rz @ ry @ rx


def _gaussian_smooth(field: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing (truncated at 3 sigma, zero padding) of a ``(C, *spatial)`` field.

    Each axis is one matrix product with the banded ``(L, L)`` Gaussian matrix: the same sums as a
    zero-padded 1D convolution, and far cheaper on CPU than a convolution with one channel.
    """
    radius = max(1, int(3.0 * sigma + 0.5))
    out = field
    for axis in range(1, field.dim()):
        pos = torch.arange(field.shape[axis], dtype=field.dtype, device=field.device)
        dist = pos.view(-1, 1) - pos.view(1, -1)
        taps = torch.arange(-radius, radius + 1, dtype=field.dtype, device=field.device)
        weights = torch.exp(-0.5 * (dist / sigma) ** 2) * (dist.abs() <= radius)
        weights = weights / torch.exp(-0.5 * (taps / sigma) ** 2).sum()
        out = (out.movedim(axis, -1) @ weights).movedim(-1, axis)
    return out


class BatchAugmenter:
    """Augments ``(B, C, *spatial)`` batches reproducibly, all samples at once.

    Args:
        cfg: augmentation settings (``enabled`` is not checked here).
        spatial_size: spatial size of the training samples (patch size or image size; 2 or 3
            entries); translations are ``cfg.translate`` times this size.
        seed: seed of every random draw; the same seed and the same sequence of batches give the
            same output.
        device: the training device (where the random fields are drawn and resampling runs).

    Raises:
        ValueError: ``spatial_size`` is not 2D/3D or ``cfg.flip_axes`` names a missing axis.
    """

    def __init__(self, cfg: AugmentConfig, spatial_size: Sequence[int], seed: int,
                 device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.size = [int(s) for s in spatial_size]
        self.dims = len(self.size)
        self.axes = flip_axes(cfg, self.dims)
        self.device = torch.device("cpu") if device is None else device
        self._gen = torch.Generator().manual_seed(seed % 2**63)
        self._field_gen = torch.Generator(device=self.device).manual_seed((seed ^ _FIELD_SALT) % 2**63)

    def _fires(self, prob: float, n: int) -> Tensor | None:
        """Per-sample ``(n,)`` bool flags of a transform, or None when its probability is 0."""
        return torch.rand(n, generator=self._gen) < prob if prob > 0 else None

    def _uniform(self, low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=self._gen, dtype=torch.float64)

    def __call__(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Augment a batch.

        Args:
            images: ``(B, C, *spatial)`` float32.
            masks: ``(B, 1, *spatial)`` integer class indices.

        Returns:
            Augmented ``(B, C, *spatial)`` float32 images and ``(B, 1, *spatial)`` masks of the
            input dtype, on the input device (the inputs are not modified).
        """
        if list(images.shape[2:]) != self.size:
            raise ValueError(f"augmentation was built for samples of size {self.size}, got {list(images.shape[2:])}")
        images, masks = self._spatial(images, masks)
        images, masks = self._flip(images, masks)
        return self._intensity(images), masks

    def _spatial(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Rotation, scale + translation and elastic warp as one resampling of the fired samples."""
        cfg, n, dims = self.cfg, images.shape[0], self.dims
        rotate = self._fires(cfg.rotate_prob, n)
        affine = self._fires(cfg.affine_prob, n)
        elastic = self._fires(cfg.elastic_prob, n)
        matrix = torch.eye(dims, dtype=torch.float64).repeat(n, 1, 1)
        shift = torch.zeros(n, dims, dtype=torch.float64)
        half = torch.tensor(self.size[::-1], dtype=torch.float64) / 2  # grid axis order: x = last axis
        if rotate is not None:
            bound = math.radians(cfg.rotate_deg)
            angles = self._uniform(-bound, bound, n, 1 if dims == 2 else 3)
            matrix = torch.where(rotate.view(n, 1, 1), _rotation(angles, dims), matrix)
        if affine is not None:
            scales = self._uniform(1 - cfg.scale, 1 + cfg.scale, n, dims)
            moves = self._uniform(-cfg.translate, cfg.translate, n, dims) * half * 2
            matrix = torch.where(affine.view(n, 1, 1), matrix @ torch.diag_embed(scales), matrix)
            shift = torch.where(affine.view(n, 1), moves, shift)
        flags = [f for f in (rotate, affine, elastic) if f is not None]
        if not flags:
            return images, masks
        fired = torch.stack(flags).any(0)
        idx = fired.nonzero().flatten()
        if idx.numel() == 0:
            return images, masks
        # pixel-centred coordinates -> grid_sample's normalised ones (align_corners=False)
        theta = torch.cat([matrix * half.view(1, 1, dims) / half.view(1, dims, 1), (shift / half).unsqueeze(2)], 2)
        theta = theta.index_select(0, idx).to(device=images.device, dtype=torch.float32)
        shape = [idx.numel(), images.shape[1], *self.size]
        grid = F.affine_grid(theta, shape, align_corners=False)
        if elastic is not None:
            grid = grid + self._displacement(elastic.index_select(0, idx), images.device)
        dev_idx = idx.to(images.device)
        warped = F.grid_sample(images.index_select(0, dev_idx), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        warped_mask = F.grid_sample(masks.index_select(0, dev_idx).to(torch.float32), grid, mode="nearest",
                                    padding_mode="zeros", align_corners=False)
        return (images.index_copy(0, dev_idx, warped),
                masks.index_copy(0, dev_idx, warped_mask.round().to(masks.dtype)))

    def _displacement(self, fired: Tensor, device: torch.device) -> Tensor:
        """Elastic displacements ``(len(fired), *spatial, dims)`` in grid units (0 where not fired).

        2D: ``Rand2DElastic`` (control points every ``elastic_spacing`` pixels offset by
        N(0, 1) times a magnitude in ``elastic_magnitude_2d`` pixels, interpolated bicubically).
        3D: ``Rand3DElastic`` (U(-1, 1) per voxel, Gaussian-smoothed with sigma in
        ``elastic_sigma``, times a magnitude in ``elastic_magnitude``, voxels).
        """
        cfg, dims, n = self.cfg, self.dims, fired.numel()
        scale = torch.tensor([2.0 / s for s in self.size[::-1]], device=device)  # pixels -> grid units
        if dims == 2:
            mags = self._uniform(*cfg.elastic_magnitude_2d, n).to(device=device, dtype=torch.float32)
            points = [math.ceil(s / cfg.elastic_spacing) + 1 for s in self.size]
            offsets = torch.randn(n, 2, *points, generator=self._field_gen, device=device)
            field = F.interpolate(offsets, size=self.size, mode="bicubic", align_corners=False)
            field = field * mags.view(n, 1, 1, 1)
        else:
            mags = self._uniform(*cfg.elastic_magnitude, n)
            sigmas = self._uniform(*cfg.elastic_sigma, n)
            noise = 2 * torch.rand(n, 3, *self.size, generator=self._field_gen, device=device) - 1
            field = torch.stack([_gaussian_smooth(noise[i], float(sigmas[i])) * float(mags[i]) for i in range(n)])
        field = field * fired.to(device).view(n, *([1] * (dims + 1)))
        # channels are spatial axes (0 = first); grid components are x = last axis first
        return field.flip(1).movedim(1, -1) * scale

    def _flip(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        n = images.shape[0]
        for axis in self.axes:
            fired = self._fires(self.cfg.flip_prob, n)
            if fired is None or not bool(fired.any()):
                continue
            flag = fired.to(images.device).view(n, *([1] * (self.dims + 1)))
            images = torch.where(flag, images.flip(2 + axis), images)
            masks = torch.where(flag, masks.flip(2 + axis), masks)
        return images, masks

    def _per_sample(self, fired: Tensor | None, values: Tensor, images: Tensor, neutral: float) -> Tensor | None:
        """``values`` where fired, ``neutral`` elsewhere, shaped to broadcast over a sample; None if none fired."""
        if fired is None or not bool(fired.any()):
            return None
        out = torch.where(fired, values, torch.full_like(values, neutral))
        return out.to(device=images.device, dtype=images.dtype).view(-1, *([1] * (images.dim() - 1)))

    def _intensity(self, images: Tensor) -> Tensor:
        cfg, n = self.cfg, images.shape[0]
        fired = self._fires(cfg.intensity_scale_prob, n)
        if fired is not None:
            factor = self._per_sample(fired, 1 + self._uniform(-cfg.intensity_scale, cfg.intensity_scale, n),
                                      images, 1.0)
            images = images if factor is None else images * factor
        fired = self._fires(cfg.intensity_shift_prob, n)
        if fired is not None:
            offset = self._per_sample(fired, self._uniform(-cfg.intensity_shift, cfg.intensity_shift, n), images, 0.0)
            images = images if offset is None else images + offset
        fired = self._fires(cfg.noise_prob, n)
        if fired is not None:
            std = self._per_sample(fired, self._uniform(0.0, cfg.noise_std, n), images, 0.0)
            if std is not None:
                idx = fired.nonzero().flatten().to(images.device)
                noise = torch.randn(idx.numel(), *images.shape[1:], generator=self._field_gen, device=images.device)
                images = images.index_copy(0, idx, images.index_select(0, idx) + noise * std.index_select(0, idx))
        fired = self._fires(cfg.gamma_prob, n)
        if fired is not None:
            gammas = self._uniform(*cfg.gamma, n)
            if bool(fired.any()):
                idx = fired.nonzero().flatten()
                images = images.index_copy(0, idx.to(images.device),
                                           _gamma(images.index_select(0, idx.to(images.device)), gammas[idx]))
        return images


def _gamma(images: Tensor, gammas: Tensor) -> Tensor:
    """``RandAdjustContrast(retain_stats=True)`` per sample: min-max to [0, 1], power, back, then
    the sample's mean and (unbiased) std restored."""
    n = images.shape[0]
    flat = images.reshape(n, -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    mean, std = flat.mean(1, keepdim=True), flat.std(1, keepdim=True)
    span = high - low
    power = gammas.to(device=images.device, dtype=images.dtype).view(n, 1)
    out = ((flat - low) / (span + 1e-7)) ** power * span + low
    out = out - out.mean(1, keepdim=True)
    out = out / (out.std(1, keepdim=True) + 1e-8) * std + mean
    return out.view_as(images)
