"""nnU-Net v2's patch size, topology and batch size under a memory budget, for one configuration.

A port of ``ExperimentPlanner.get_plans_for_configuration`` and of the feature-map count behind
its VRAM estimate (``PlainConvUNet.compute_conv_feature_map_size`` of
*MIC-DKFZ/dynamic-network-architectures*), with nnU-Net's constants: a reference of 560e6 (3D) /
85e6 (2D) feature-map voxels for 8 GB at batch size 2 (3D) / 12 (2D), 32 base features doubling
up to 320 (3D) / 512 (2D), two convolutions per stage, feature maps at least 4 voxels wide.
The poolings and kernels come from :func:`fedseg.config.topology.pool_and_conv_props` (nnU-Net's
``get_pool_and_conv_props``) without a pooling cap, as nnU-Net's planner calls it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedseg.config.topology import MIN_FEATURE_MAP_SIZE, pool_and_conv_props

__all__ = ["NetworkPlan", "plan_network", "feature_map_voxels", "pad_shape", "REFERENCE_GB"]

REFERENCE_GB = 8.0
"""The memory nnU-Net's reference values correspond to."""
_REFERENCE = {3: 560_000_000, 2: 85_000_000}
_REFERENCE_BATCH = {3: 2, 2: 12}
_MAX_FEATURES = {3: 320, 2: 512}
_BASE_FEATURES = 32
_CONVS_PER_STAGE = 2
_MIN_BATCH = 2
_NO_CAP = 999999


@dataclass(frozen=True)
class NetworkPlan:
    """One configuration's patch, network and batch.

    Attributes:
        spacing: target spacing, mm per axis.
        median_shape: median shape after resampling (float, as nnU-Net keeps it).
        patch_size: training patch, divisible by ``2 ** pools`` per axis.
        pool_strides: stride into each lower level (per axis, 1 or 2).
        kernels: convolution kernel per level (the last is the bottleneck's).
        batch_size: cases per batch.
        estimate: feature-map voxels of nnU-Net's reference U-Net on the patch.
        reference: the budget in the same units (``reference value * memory / 8 GB``).
        shrink_steps: how often the patch was shrunk to fit.
    """

    spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    patch_size: tuple[int, ...]
    pool_strides: list[list[int]]
    kernels: list[list[int]]
    batch_size: int
    estimate: int
    reference: float
    shrink_steps: int


def pad_shape(shape: Sequence[int], divisor: Sequence[int]) -> list[int]:
    """Round every entry up to a multiple of its divisor (nnU-Net's ``pad_shape``)."""
    return [int(math.ceil(n / d) * d) for n, d in zip(shape, divisor, strict=True)]


def _topology(spacing: Sequence[float], patch: Sequence[int]) -> tuple[list[list[int]], list[list[int]],
                                                                         list[int], list[int]]:
    strides, kernels = pool_and_conv_props(spacing, patch, min_feature_map_size=MIN_FEATURE_MAP_SIZE,
                                           max_pools=_NO_CAP)
    divisor = [2 ** sum(1 for step in strides if step[a] == 2) for a in range(len(spacing))]
    return strides, kernels, pad_shape(patch, divisor), divisor


def feature_map_voxels(patch: Sequence[int], strides: Sequence[Sequence[int]], num_classes: int) -> int:
    """Sum of the conv feature-map sizes (channels x voxels) of nnU-Net's PlainConvUNet on ``patch``.

    Encoder stage ``s`` (features ``min(max, 32 * 2**s)``): two convolutions at its resolution.
    Decoder stage at level ``l``: two convolutions and the transposed convolution's output at level
    ``l``; the segmentation output at full resolution (no deep supervision in the estimate).
    """
    dims = len(patch)
    levels = len(strides) + 1
    features = [min(_MAX_FEATURES[dims], _BASE_FEATURES * 2 ** s) for s in range(levels)]
    sizes = [list(patch)]
    for step in strides:
        sizes.append([n // k for n, k in zip(sizes[-1], step, strict=True)])
    voxels = [math.prod(s) for s in sizes]
    total = sum(_CONVS_PER_STAGE * features[s] * voxels[s] for s in range(levels))
    total += sum((_CONVS_PER_STAGE + 1) * features[level] * voxels[level] for level in range(levels - 1))
    return int(total + num_classes * voxels[0])


def plan_network(spacing: Sequence[float], median_shape: Sequence[float], num_classes: int, memory_gb: float,
                 dataset_voxels: float) -> NetworkPlan:
    """nnU-Net's ``get_plans_for_configuration`` for one configuration (2D or 3D).

    1. Initial patch: proportional to ``1 / spacing``, scaled to the volume of 256^3 (2048^2 in
       2D), rounded, clipped to the median shape.
    2. Topology (``get_pool_and_conv_props``); the patch is padded to a multiple of ``2 ** pools``.
    3. While the feature-map estimate exceeds ``reference * memory_gb / 8``: shrink the axis with the
       largest ``patch / median_shape`` by one divisor step (re-derived after the first cut, as
       nnU-Net does), and re-derive the topology.
    4. Batch size ``round(reference / estimate * reference_batch)``, at most 5 % of the dataset's
       voxels (``dataset_voxels``), at least 2.

    Raises:
        ValueError: a spacing or the memory is not positive.
    """
    dims = len(spacing)
    if min(spacing) <= 0 or memory_gb <= 0:
        raise ValueError(f"spacing {list(spacing)} and memory {memory_gb} GB must be positive")
    inverse = [1.0 / s for s in spacing]
    target_volume = 256.0 ** 3 if dims == 3 else 2048.0 ** 2
    scale = (target_volume / math.prod(inverse)) ** (1.0 / dims)
    # nnU-Net clips to the (float) median; rounding it up changes nothing after padding to the divisor
    initial = [min(int(round(v * scale)), max(1, math.ceil(m))) for v, m in zip(inverse, median_shape, strict=True)]
    strides, kernels, patch, divisor = _topology(spacing, initial)
    estimate = feature_map_voxels(patch, strides, num_classes)
    reference = _REFERENCE[dims] * (memory_gb / REFERENCE_GB)
    steps = 0
    while estimate > reference:
        ratios = [p / m for p, m in zip(patch, median_shape, strict=True)]
        axis = sorted(range(dims), key=lambda a: ratios[a])[-1]  # stable: ties go to the last axis
        trial = list(patch)
        trial[axis] -= divisor[axis]
        divisor = _topology(spacing, trial)[3]
        patch[axis] -= divisor[axis]
        strides, kernels, patch, divisor = _topology(spacing, patch)
        estimate = feature_map_voxels(patch, strides, num_classes)
        steps += 1
    batch = int(round(reference / estimate * _REFERENCE_BATCH[dims]))
    five_percent = int(round(dataset_voxels * 0.05 / math.prod(patch)))
    batch = max(min(batch, five_percent), _MIN_BATCH)
    return NetworkPlan(tuple(float(s) for s in spacing), tuple(float(m) for m in median_shape), tuple(patch),
                       strides, kernels, batch, estimate, reference, steps)
