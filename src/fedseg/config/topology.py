"""nnU-Net's rule for a U-Net's poolings and convolution kernels from a patch size and a spacing.

A port of nnU-Net v2's ``get_pool_and_conv_props``
(*MIC-DKFZ/nnUNet: nnunetv2/experiment_planning/experiment_planners/network_topology.py*; the
default planner calls it with ``min_feature_map_size = 4``), used by ``model.name: dynunet`` when
its ``kernels``/``pool_strides`` are not given. Each step pools (stride 2) every axis that

* is at least ``2 * min_feature_map_size`` (8) voxels long at the current resolution,
* has a current spacing below twice the smallest current spacing among those axes, and
* was pooled fewer than ``max_pools`` times;

a step that would pool a single axis needs it to be at least ``3 * min_feature_map_size`` long.
The convolution kernel of an axis is 1 until its spacing comes within a factor 2 of the smallest
spacing, then 3 for good; the bottleneck is 3 along every axis.

One deliberate difference: nnU-Net indexes the spacings of the *size-valid* axes with the axis
number when it sets kernels (``spacings_of_axes[d]``), which is the same list as every axis's
spacing while all axes are still long enough, and is misaligned (or raises ``IndexError``) after
an axis dropped out by size. Here the kernel test uses axis ``d``'s own current spacing, which is
what the code's comment describes; the results agree wherever nnU-Net's code is well defined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["MIN_FEATURE_MAP_SIZE", "default_max_pools", "pool_and_conv_props"]

MIN_FEATURE_MAP_SIZE = 4
"""Smallest edge of a bottleneck feature map (nnU-Net's ``UNet_featuremap_min_edge_length``)."""

_MAX_POOLS = {2: 6, 3: 5}


def default_max_pools(spatial_dims: int) -> int:
    """Poolings per axis at most: 5 in 3D, 6 in 2D.

    nnU-Net v2's default planner passes no cap (999999) and stops on the feature-map size alone;
    the cap only binds for patches over 128 (3D) or 256 (2D) voxels along an axis.
    """
    return _MAX_POOLS.get(spatial_dims, 5)


def pool_and_conv_props(
    spacing: Sequence[float],
    patch_size: Sequence[int],
    *,
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
    max_pools: int | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """The per-level pooling strides and convolution kernels nnU-Net derives for a patch.

    Args:
        spacing: mm per spatial axis of the (resampled) data, > 0.
        patch_size: training patch, voxels per spatial axis (same length as ``spacing``).
        min_feature_map_size: smallest edge of a pooled feature map.
        max_pools: poolings per axis at most (default :func:`default_max_pools`).

    Returns:
        ``(pool_strides, kernels)``: ``pool_strides[i]`` is the stride into level ``i + 1``
        (one per pooling step, each entry 1 or 2 per axis); ``kernels[i]`` the convolution
        kernel of level ``i`` (one more entry than ``pool_strides``: the last is the
        bottleneck's, all 3).

    Raises:
        ValueError: the lengths differ, or a spacing or size is not positive.
    """
    dim = len(spacing)
    if len(patch_size) != dim:
        raise ValueError(f"patch size {list(patch_size)} and spacing {list(spacing)} need one entry per axis each")
    if min(spacing) <= 0 or min(patch_size) < 1:
        raise ValueError(f"spacing {list(spacing)} and patch size {list(patch_size)} must be positive")
    cap = default_max_pools(dim) if max_pools is None else max_pools
    current_spacing = [float(s) for s in spacing]
    current_size = [float(n) for n in patch_size]
    num_pools = [0] * dim
    kernel = [1] * dim
    pool_strides: list[list[int]] = []
    kernels: list[list[int]] = []
    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * min_feature_map_size]
        if not valid:
            break
        smallest = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / smallest < 2]
        valid = [i for i in valid if num_pools[i] < cap]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_feature_map_size:
            break
        if not valid:
            break
        for d in range(dim):
            if kernel[d] != 3 and current_spacing[d] / min(current_spacing) < 2:
                kernel[d] = 3
        step = [1] * dim
        for axis in valid:
            step[axis] = 2
            num_pools[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = math.ceil(current_size[axis] / 2)
        pool_strides.append(step)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    return pool_strides, kernels
