"""The ``model`` section: fields every model shares, plus one typed config per model.

``model.name`` selects the model's own config class from :data:`MODEL_CONFIGS` (the registry
holds the schemas, :data:`fedseg.models.MODELS` the builders under the same names), and the
section is validated against that class: a key that model does not take (a transformer field
on a plain ``unet``, a typo) is an error naming the key and the allowed ones, before anything
runs. :meth:`ModelConfig.arguments` gives the builder its plain keyword arguments, so models
never import this package.

Adding a model: a config class here registered under its name, a builder in ``fedseg.models``
registered under the same name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, PositiveInt, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from fedseg.config.base import StrictModel
from fedseg.registry import Registry, UnknownNameError

__all__ = [
    "ModelConfig",
    "UNetConfig",
    "TransUNetConfig",
    "FedBCSUNetConfig",
    "DynUNetConfig",
    "FedOAPUNetConfig",
    "MODEL_CONFIGS",
    "DEFAULT_MODEL",
    "model_config_class",
    "owners_of",
    "typed_model_config",
    "SAMConfig",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "unet"
"""``model.name`` when the section does not set one."""

_NOT_ARGUMENTS = frozenset({"name", "init_checkpoint"})
"""Common fields that select or initialise the model; they are not constructor arguments."""

_LEGACY_TRANSFORMER_KEYS = ("heads", "transformer_layers", "mlp_ratio", "pos_embed", "pos_grid")
"""Before per-model configs, every run's config.yaml held these for every model (ignored by unet)."""


class ModelConfig(StrictModel):
    """Fields every model shares. A run's ``model`` is an instance of the class registered for
    ``name`` in :data:`MODEL_CONFIGS` (e.g. :class:`UNetConfig`); this base is usable directly for
    the fields it holds.
    """

    name: str = DEFAULT_MODEL
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = Field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = Field(1, ge=0)
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    dropout: float = Field(0.0, ge=0, lt=1)
    init_checkpoint: str | None = Field(
        None, description="initial weights from this file (a state dict, or a checkpoint holding one under "
        "'state_dict'/'model'), loaded with weights_only=True before round 1"
    )

    @model_validator(mode="after")
    def _strides_match(self) -> ModelConfig:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"model.strides needs len(channels)-1 = {len(self.channels) - 1} entries, got {len(self.strides)}"
            )
        return self

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of the model's builder: every field except ``name`` and ``init_checkpoint``."""
        return {key: getattr(self, key) for key in type(self).model_fields if key not in _NOT_ARGUMENTS}

    def size_divisors(self, spatial_dims: int) -> list[int]:
        """What every spatial size of an input must be a multiple of, per axis: the product of
        ``strides`` (a model with per-axis strides overrides it)."""
        return [math.prod(self.strides)] * spatial_dims

    def for_patch(self, patch_size: Sequence[int] | None, spacing: Sequence[float] | None) -> ModelConfig:
        """This config with what a model derives from the training patch filled in (``RunConfig``
        calls it with ``train.patch_size`` or the data's target shape, and the target spacing);
        ``self`` for models that derive nothing."""
        return self


MODEL_CONFIGS: Registry[type[ModelConfig]] = Registry("model")
"""Model name -> its typed config class."""


@MODEL_CONFIGS.register("unet")
class UNetConfig(ModelConfig):
    """MONAI's residual U-Net (:mod:`fedseg.models.unet`): the common fields only."""

    name: Literal["unet"] = "unet"


@MODEL_CONFIGS.register("transunet")
class TransUNetConfig(ModelConfig):
    """FedSegNet's U-Net with a transformer bottleneck (:mod:`fedseg.models.transunet`)."""

    name: Literal["transunet"] = "transunet"
    heads: int = Field(4, ge=1, description="attention heads; must divide channels[-1]")
    transformer_layers: int = Field(1, ge=0, description="transformer blocks at the bottleneck (0: none)")
    mlp_ratio: float = Field(2.0, gt=0, description="transformer MLP width / channels[-1]")
    pos_embed: Literal["learned", "sincos", "none"] = Field("learned", description="positional embedding")
    pos_grid: int = Field(8, ge=1, description="side of the learned position grid (resized to the bottleneck)")


def _derive_from_features(data: Any, model: str, default: list[int], at_least: int) -> Any:
    """``channels``/``strides`` of a plain U-Net derived from ``features`` (2x pooling per stage).

    A derived key given without ``features`` must equal the derived value; given beside
    ``features`` (an assignment, or a config.yaml edited in ``features`` only), features wins.
    """
    if not isinstance(data, Mapping):
        return data
    out = dict(data)
    features = out.get("features", default)
    if not isinstance(features, list) or len(features) < at_least:
        raise ValueError(f"model.features needs >= {at_least} widths (encoder stages, then the bottleneck), "
                         f"got {features!r}")
    derived: dict[str, Any] = {"channels": list(features), "strides": [2] * (len(features) - 1)}
    for key, value in derived.items():
        if key in out and list(out[key]) != value:
            if "features" not in out:
                raise ValueError(f"model.{key} is derived from model.features for {model} (would be {value}), "
                                 f"got {out[key]!r}; set model.features instead")
            log.warning("model.%s %r of %s follows model.features: %r", key, out[key], model, value)
        out[key] = value
    return out


@MODEL_CONFIGS.register("fedbcs_unet")
class FedBCSUNetConfig(ModelConfig):
    """FedBCS's U-Net with FSR and the dual-level feature taps (:mod:`fedseg.models.fedbcs_unet`), 2D.

    ``features`` sets the widths; ``channels`` and ``strides`` are derived from it (``channels =
    features``, ``strides = [2] * (len(features) - 1)``, the 2x2 max-pooling) so that code reading
    the common fields (image-size divisibility, inference padding) sees this network. Setting them
    to anything else without ``features`` is an error (with ``features``, it wins, with a warning).
    ``num_res_units``, ``norm`` and ``dropout`` are fixed (0, ``batch``, 0: plain conv blocks with
    BatchNorm; ``norm`` tells the DP-SGD check that the model has BatchNorm).
    """

    name: Literal["fedbcs_unet"] = "fedbcs_unet"
    features: list[PositiveInt] = Field(
        default_factory=lambda: [32, 64, 128, 256, 512],
        description="encoder widths then the bottleneck width (>= 3 entries; default: the authors' base 32)",
    )
    fsr: bool = Field(True, description="FSR after encoder stages 2..n (enc2, enc3, enc4); false: none")
    bn_running_stats: bool = Field(
        False, description="BN with running statistics; false (the authors): batch statistics at test time too"
    )
    fusion_channels: int = Field(256, ge=1, description="output channels of each feature-level fusion 1x1 conv")
    num_res_units: Literal[0] = Field(0, description="fixed: plain conv3x3-BN-ReLU blocks, no residual units")
    norm: Literal["batch"] = Field("batch", description="fixed: BatchNorm without affine (see bn_running_stats)")
    dropout: float = Field(0.0, ge=0, le=0, description="fixed: no dropout")

    @model_validator(mode="before")
    @classmethod
    def _derive_common(cls, data: Any) -> Any:
        return _derive_from_features(data, "fedbcs_unet", [32, 64, 128, 256, 512], 3)

    def arguments(self) -> dict[str, Any]:
        """The builder's keyword arguments: ``features``, ``fsr``, ``bn_running_stats``, ``fusion_channels``."""
        return {key: getattr(self, key) for key in ("features", "fsr", "bn_running_stats", "fusion_channels")}


@MODEL_CONFIGS.register("fedoap_unet")
class FedOAPUNetConfig(ModelConfig):
    """FedOAP's U-Net with decoupled cross-attention and a spatial adapter at the bottleneck
    (:mod:`fedseg.models.fedoap_unet`), 2D or 3D.

    ``channels``/``strides`` are derived from ``features`` as for ``fedbcs_unet`` (2x2 pooling per
    stage); ``num_res_units``, ``norm`` and ``dropout`` are fixed (plain conv-BN-ReLU blocks).
    """

    name: Literal["fedoap_unet"] = "fedoap_unet"
    features: list[PositiveInt] = Field(
        default_factory=lambda: [32, 64, 128, 256],
        description="encoder widths then the bottleneck width d (>= 2 entries; dca_heads must divide d)",
    )
    dca_heads: int = Field(8, ge=1, description="DCA attention heads (divides features[-1])")
    dca: bool = Field(True, description="decoupled cross-attention at the bottleneck; false: the no-DCA ablation")
    adapter: bool = Field(True, description="zero-initialised spatial adapter after the DCA block")
    num_res_units: Literal[0] = Field(0, description="fixed: plain conv3x3-BN-ReLU blocks, no residual units")
    norm: Literal["batch"] = Field("batch", description="fixed: BatchNorm with affine and running statistics")
    dropout: float = Field(0.0, ge=0, le=0, description="fixed: no dropout")

    @model_validator(mode="before")
    @classmethod
    def _derive_common(cls, data: Any) -> Any:
        return _derive_from_features(data, "fedoap_unet", [32, 64, 128, 256], 2)

    def arguments(self) -> dict[str, Any]:
        """The builder's keyword arguments: ``features``, ``dca_heads``, ``dca``, ``adapter``."""
        return {key: getattr(self, key) for key in ("features", "dca_heads", "dca", "adapter")}


def model_config_class(raw: Any) -> type[ModelConfig]:
    """The config class for a raw ``model`` mapping (by its ``name``; :data:`DEFAULT_MODEL` if absent).

    Raises:
        fedseg.registry.UnknownNameError: the name is not registered (lists the allowed ones).
    """
    name = raw.get("name", DEFAULT_MODEL) if isinstance(raw, Mapping) else DEFAULT_MODEL
    return MODEL_CONFIGS.get(str(name))


def owners_of(key: str) -> list[str]:
    """Names of the registered models whose config has the field ``key``."""
    return [name for name in MODEL_CONFIGS.names() if key in MODEL_CONFIGS.get(name).model_fields]


def _without_legacy_keys(cls: type[ModelConfig], raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` minus the transformer fields that config.yaml files written before the per-model
    split carry for every model, when all of them are there and ``cls`` takes none (they were
    ignored then); a hand-written subset stays and is refused."""
    present = [k for k in _LEGACY_TRANSFORMER_KEYS if k in raw and k not in cls.model_fields]
    if len(present) < len(_LEGACY_TRANSFORMER_KEYS):
        return dict(raw)
    log.warning("model %r ignores %s (a config.yaml written before per-model configs); dropped",
                raw.get("name", DEFAULT_MODEL), ", ".join(present))
    return {k: v for k, v in raw.items() if k not in present}


def typed_model_config(value: Any) -> Any:
    """Validate a raw ``model`` mapping against the config class its ``name`` selects.

    Instances pass through unchanged; anything else is left to the caller's validation.

    Raises:
        pydantic.ValidationError: an unknown model name (at ``name``) or an invalid field (at
            that field), so the caller's error report names ``model.<key>``.
    """
    if not isinstance(value, Mapping):
        return value
    try:
        cls = model_config_class(value)
    except UnknownNameError as err:
        detail = InitErrorDetails(type=PydanticCustomError("unknown_model", str(err)), loc=("name",),
                                  input=value.get("name"))
        raise ValidationError.from_exception_data("ModelConfig", [detail]) from None
    return cls.model_validate(_without_legacy_keys(cls, value))


# model sections registered by their own modules (imported last: they import this one)
from fedseg.config.dynunet import DynUNetConfig  # noqa: E402
from fedseg.config.sam import SAMConfig  # noqa: E402
