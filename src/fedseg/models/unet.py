"""MONAI's residual UNet for 2D and 3D, built from plain arguments (typed config: ``fedseg.config.UNetConfig``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from monai.networks.nets import UNet
from torch import nn

from fedseg.models.registry import MODELS

__all__ = ["build_unet", "norm_spec"]

_SPATIAL_DIMS = (2, 3)
_MAX_GROUPS = 8


def norm_spec(norm: str, group_channels: list[int]) -> tuple[str, dict[str, Any]] | str | None:
    """Translate a config norm name into MONAI's ``norm`` argument.

    Args:
        norm: one of ``"batch"``, ``"instance"``, ``"group"``, ``"none"``.
        group_channels: channel counts of every normalised layer; GroupNorm needs a group count
            that divides all of them.

    Returns:
        ``"batch"``; ``("instance", {"affine": True})``; ``("group", {"num_groups": g})`` with
        ``g`` the largest divisor of every channel count that is at most 8; or ``None`` (MONAI's
        ``ADN`` block skips normalisation when ``norm is None``).

    Raises:
        ValueError: ``norm`` is not one of the allowed names.
    """
    if norm == "batch":
        return "batch"
    if norm == "instance":
        # affine=True: MONAI's default InstanceNorm has no learnable scale/shift.
        return ("instance", {"affine": True})
    if norm == "group":
        num_groups = math.gcd(_MAX_GROUPS, *group_channels)
        return ("group", {"num_groups": num_groups})
    if norm == "none":
        return None
    raise ValueError(f"model.norm {norm!r} is not supported; allowed: 'batch', 'instance', 'group', 'none'")


@MODELS.register("unet")
def build_unet(spatial_dims: int, in_channels: int, out_channels: int, *, channels: Sequence[int],
               strides: Sequence[int], num_res_units: int = 1, norm: str = "batch", dropout: float = 0.0) -> nn.Module:
    """Build :class:`monai.networks.nets.UNet`.

    The network maps ``(B, in_channels, *spatial)`` float images to raw logits
    ``(B, out_channels, *spatial)`` (no softmax). Every spatial size must be divisible by the
    product of ``strides``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels, >= 1.
        out_channels: number of classes including background, >= 1.
        channels: width of each level, e.g. ``(16, 32, 64, 128)``.
        strides: downsampling factor between consecutive levels (``len(channels) - 1`` entries).
        num_res_units: residual units per block (0: plain convolutions).
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"`` (see :func:`norm_spec`).
        dropout: dropout rate.

    Returns:
        The untrained network.

    Raises:
        ValueError: ``spatial_dims`` is not 2 or 3, or a channel count is below 1.
    """
    if spatial_dims not in _SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be one of {_SPATIAL_DIMS}, got {spatial_dims!r}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    # With residual units MONAI also normalises the top transposed conv, whose width is
    # out_channels, so GroupNorm must divide it too.
    normed = list(channels) + ([out_channels] if num_res_units > 0 else [])
    net = UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm_spec(norm, normed),  # type: ignore[arg-type]  # MONAI accepts None
        dropout=dropout,
    )
    # The "head" of personalised FL (FedPer/FedRep): MONAI builds the U-Net as
    # Sequential(down, SkipConnection(...), up); ``model.2`` is the last decoder block, i.e. the
    # final up-convolution to ``out_channels`` (+ its residual unit).
    net.head_module_names = ("model.2",)  # type: ignore[assignment]  # plain attribute on the module
    return net
