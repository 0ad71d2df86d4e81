"""The model registry: a name -> builder map filled by the model modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fedseg.registry import Registry

__all__ = ["MODELS", "ModelBuilder"]

ModelBuilder = Callable[..., nn.Module]
"""``builder(spatial_dims, in_channels, out_channels, **arguments)``: builds a segmentation network
mapping ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``. The keyword
arguments are the plain fields of the model's typed config (``fedseg.config.MODEL_CONFIGS``,
same name), MONAI style; builders never see a config object."""

MODELS: Registry[Callable[..., Any]] = Registry("model")
