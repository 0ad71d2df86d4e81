"""Segmentation networks, registered by name in :data:`MODELS`.

Builders take plain arguments (MONAI style). Their typed configs live in
:mod:`fedseg.config.model`, registered under the same names, so this package never imports the
configuration.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from fedseg.models import dynunet as dynunet  # registers "dynunet"
from fedseg.models import fedbcs_unet as fedbcs_unet  # registers "fedbcs_unet"
from fedseg.models import fedoap_unet as fedoap_unet  # registers "fedoap_unet"
from fedseg.models import transunet as transunet  # registers "transunet"
from fedseg.models import unet as unet  # registers "unet"
from fedseg.models import sam as sam  # registers "sam"
from fedseg.models.registry import MODELS, ModelBuilder

__all__ = ["MODELS", "ModelBuilder", "ModelSpec", "build_model"]


class ModelSpec(Protocol):
    """What :func:`build_model` needs of a model config (``fedseg.config.ModelConfig`` is one)."""

    @property
    def name(self) -> str: ...

    def arguments(self) -> dict[str, Any]: ...


def build_model(cfg: ModelSpec, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """Build the model registered as ``cfg.name`` from the plain arguments of its typed config.

    Args:
        cfg: model section of the run config; ``cfg.name`` selects the builder,
            ``cfg.arguments()`` gives its keyword arguments.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: number of classes including background.

    Returns:
        A module mapping ``(B, in_channels, *spatial)`` float images to logits
        ``(B, out_channels, *spatial)``.

    Raises:
        fedseg.registry.UnknownNameError: ``cfg.name`` is not registered (lists the allowed names).
        ValueError: the builder rejects ``spatial_dims``, a channel count or an argument.
    """
    builder: ModelBuilder = MODELS.get(cfg.name)
    return builder(spatial_dims, in_channels, out_channels, **cfg.arguments())
