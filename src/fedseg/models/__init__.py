"""Segmentation networks, registered by name in :data:`MODELS`."""

from __future__ import annotations

from torch import nn

from fedseg.config import ModelConfig
from fedseg.models import transunet as transunet  # registers "transunet"
from fedseg.models import unet as unet  # registers "unet"
from fedseg.models.registry import MODELS, ModelBuilder

__all__ = ["MODELS", "ModelBuilder", "build_model"]


def build_model(cfg: ModelConfig, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """Build the model registered as ``cfg.name``.

    Args:
        cfg: model section of the run config; ``cfg.name`` selects the builder.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: number of classes including background.

    Returns:
        A module mapping ``(B, in_channels, *spatial)`` float images to logits
        ``(B, out_channels, *spatial)``.

    Raises:
        fedseg.registry.UnknownNameError: ``cfg.name`` is not registered (lists the allowed names).
        ValueError: the builder rejects ``spatial_dims`` or a channel count.
    """
    return MODELS.get(cfg.name)(cfg, spatial_dims, in_channels, out_channels)
