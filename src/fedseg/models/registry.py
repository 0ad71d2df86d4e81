"""The model registry: a name -> builder map filled by the model modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fedseg.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from fedseg.config import ModelConfig

__all__ = ["MODELS", "ModelBuilder"]


class ModelBuilder(Protocol):
    """Builds a segmentation network that maps ``(B, in_channels, *spatial)`` to logits."""

    def __call__(
        self, cfg: ModelConfig, spatial_dims: int, in_channels: int, out_channels: int
    ) -> nn.Module: ...


MODELS: Registry[ModelBuilder] = Registry("model")
