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
from fedseg.config.topology import pool_and_conv_props
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
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        features = out.get("features", [32, 64, 128, 256, 512])
        if not isinstance(features, list) or len(features) < 3:
            raise ValueError(f"model.features needs >= 3 widths (encoder stages, then the bottleneck), "
                             f"got {features!r}")
        derived: dict[str, Any] = {"channels": list(features), "strides": [2] * (len(features) - 1)}
        for key, value in derived.items():
            if key in out and list(out[key]) != value:
                if "features" not in out:
                    raise ValueError(f"model.{key} is derived from model.features for fedbcs_unet (would be {value}), "
                                     f"got {out[key]!r}; set model.features instead")
                # an assignment to features, or a config.yaml edited in features only: features wins
                log.warning("model.%s %r of fedbcs_unet follows model.features: %r", key, out[key], value)
            out[key] = value
        return out

    def arguments(self) -> dict[str, Any]:
        """The builder's keyword arguments: ``features``, ``fsr``, ``bn_running_stats``, ``fusion_channels``."""
        return {key: getattr(self, key) for key in ("features", "fsr", "bn_running_stats", "fusion_channels")}


_DYNUNET_SOURCES = {"channels": "filters", "strides": "pool_strides"}
"""The dynunet field each common field is derived from."""


def _nnunet_filters(levels: int, spatial_dims: int) -> list[int]:
    """nnU-Net's widths: 32 doubling per level, capped at 320 in 3D and 512 in 2D."""
    return [min(32 * 2**i, 320 if spatial_dims == 3 else 512) for i in range(levels)]


@MODEL_CONFIGS.register("dynunet")
class DynUNetConfig(ModelConfig):
    """nnU-Net's U-Net as MONAI's ``DynUNet`` (:mod:`fedseg.models.dynunet`), 2D or 3D.

    ``kernels`` (one per level, one size per axis) and ``pool_strides`` (one per pooling step:
    the stride into the next level, per axis) are given together, or both left unset and derived
    by nnU-Net's rule (:mod:`fedseg.config.topology`) from ``train.patch_size`` (else the data's
    target shape) and ``data.preprocess.target_spacing`` (else ``data.pixel_spacing``, else
    isotropic) when the run config is validated, so ``config.yaml`` records them. ``channels``
    and ``strides`` are derived (``channels = filters``; ``strides[i]`` = the least common
    multiple of ``pool_strides[i]``, an isotropic bound for code reading the common fields; the
    exact per-axis divisors are :meth:`size_divisors`). InstanceNorm (affine) and leaky ReLU
    (0.01) are fixed, as in nnU-Net.
    """

    name: Literal["dynunet"] = "dynunet"
    kernels: list[list[PositiveInt]] | None = Field(
        None, description="convolution kernel per level, one odd size per axis (with pool_strides; default: derived)"
    )
    pool_strides: list[list[PositiveInt]] | None = Field(
        None, description="stride into each lower level, one per axis (len(kernels) - 1 entries; default: derived)"
    )
    filters: list[PositiveInt] | None = Field(
        None, description="width per level (a longer list is cut); default nnU-Net's 32 doubling, capped at 320 "
        "(3D) / 512 (2D)"
    )
    max_pools: PositiveInt | None = Field(None, description="when derived: poolings per axis at most (default 5 in "
                                          "3D, 6 in 2D)")
    deep_supervision: bool = Field(True, description="train every decoder level's output too, nnU-Net's weights")
    deep_supr_num: PositiveInt | None = Field(
        None, description="extra outputs below full resolution (< len(kernels) - 1); default: every decoder level "
        "(len(kernels) - 2), as nnU-Net"
    )
    res_block: bool = Field(False, description="residual convolution blocks")
    num_res_units: Literal[0] = Field(0, description="fixed: see res_block")
    norm: Literal["instance"] = Field("instance", description="fixed: InstanceNorm with affine parameters")

    @model_validator(mode="before")
    @classmethod
    def _derive_common(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        kernels, pools = out.get("kernels"), out.get("pool_strides")
        if (kernels is None) != (pools is None):
            missing = "pool_strides" if pools is None else "kernels"
            raise ValueError(f"model.{missing}: dynunet takes model.kernels and model.pool_strides together, or "
                             "neither (then both are derived from train.patch_size and the target spacing)")
        if kernels is None or pools is None:
            given = [key for key in ("channels", "strides") if key in out]
            if given:
                raise ValueError(f"model.{given[0]} is derived for dynunet; set model.filters, model.kernels and "
                                 "model.pool_strides instead")
            return out
        _check_layout(kernels, pools)
        filters = out.get("filters") or _nnunet_filters(len(kernels), len(kernels[0]))
        if len(filters) < len(kernels):
            raise ValueError(f"model.filters needs one width per level ({len(kernels)} levels), got {filters!r}")
        derived: dict[str, Any] = {"channels": list(filters[: len(kernels)]),
                                   "strides": [math.lcm(*step) for step in pools]}
        for key, value in derived.items():
            source = _DYNUNET_SOURCES[key]
            if key in out and list(out[key]) != value:
                if source not in data:
                    raise ValueError(f"model.{key} is derived from model.{source} for dynunet (would be {value}), "
                                     f"got {out[key]!r}; set model.{source} instead")
                # config.yaml edited (or --set) in the source only: the source wins
                log.warning("model.%s %r of dynunet follows model.%s: %r", key, out[key], source, value)
            out[key] = value
        return out

    @model_validator(mode="after")
    def _outputs_fit(self) -> DynUNetConfig:
        if self.kernels is not None and self.deep_supervision and self.deep_supr_num is not None:
            if self.deep_supr_num > len(self.kernels) - 2:
                raise ValueError(f"model.deep_supr_num {self.deep_supr_num}: at most len(kernels) - 2 = "
                                 f"{len(self.kernels) - 2} (one output per decoder level below full resolution)")
        return self

    @property
    def resolved(self) -> bool:
        """Whether kernels and pool strides are known (given, or derived by :meth:`for_patch`)."""
        return self.kernels is not None and self.pool_strides is not None

    def size_divisors(self, spatial_dims: int) -> list[int]:
        """The product of ``pool_strides`` along each axis."""
        if self.pool_strides is None or len(self.pool_strides[0]) != spatial_dims:
            return super().size_divisors(spatial_dims)
        return [math.prod(step[axis] for step in self.pool_strides) for axis in range(spatial_dims)]

    def for_patch(self, patch_size: Sequence[int] | None, spacing: Sequence[float] | None) -> ModelConfig:
        """Derive ``kernels`` and ``pool_strides`` by nnU-Net's rule when they are unset.

        Raises:
            ValueError: nothing to derive them from, mismatched lengths, or a patch too small for
                two poolings (DynUNet's minimum); the message names the keys.
        """
        if self.resolved:
            return self
        if patch_size is None:
            raise ValueError("model.kernels / model.pool_strides: dynunet derives them from train.patch_size (or "
                             "data.preprocess.target_shape / data.image_size); set one, or give both model keys")
        spacing = [1.0] * len(patch_size) if spacing is None else list(spacing)
        if len(spacing) != len(patch_size):
            raise ValueError(f"model.kernels: cannot derive them from patch {list(patch_size)} and spacing {spacing} "
                             "(data.preprocess.target_spacing / data.pixel_spacing): one value per axis each")
        pools, kernels = pool_and_conv_props(spacing, patch_size, max_pools=self.max_pools)
        if len(pools) < 2:
            raise ValueError(f"model.kernels: patch {list(patch_size)} (spacing {spacing}) allows {len(pools)} "
                             "pooling(s) by nnU-Net's rule; dynunet needs >= 2: a larger train.patch_size, or give "
                             "model.kernels and model.pool_strides")
        raw = self.model_dump(exclude={"channels", "strides"})
        return type(self).model_validate({**raw, "kernels": kernels, "pool_strides": pools})

    def arguments(self) -> dict[str, Any]:
        """The builder's keyword arguments (``deep_supr_num`` resolved to its default).

        Raises:
            ValueError: kernels and pool strides are still unknown (validate a whole run config).
        """
        if self.kernels is None or self.pool_strides is None:
            raise ValueError("model.kernels / model.pool_strides of dynunet are unset; they are derived when the "
                             "run config is validated (train.patch_size, data target shape), or give both")
        levels = len(self.kernels)
        return {"kernels": self.kernels, "pool_strides": self.pool_strides, "filters": self.channels,
                "dropout": self.dropout, "deep_supervision": self.deep_supervision,
                "deep_supr_num": self.deep_supr_num or max(levels - 2, 1), "res_block": self.res_block}


def _check_layout(kernels: Any, pools: Any) -> None:
    """Shapes of a given ``kernels`` / ``pool_strides`` pair (values are checked by pydantic)."""
    if not isinstance(kernels, list) or not isinstance(pools, list) or not all(
            isinstance(k, list) for k in kernels + pools):
        raise ValueError("model.kernels and model.pool_strides are lists of per-axis lists, e.g. kernels "
                         "[[3, 3], [3, 3], [3, 3]] and pool_strides [[2, 2], [2, 2]]")
    if len(kernels) < 3 or len(pools) != len(kernels) - 1:
        raise ValueError(f"model.pool_strides needs len(kernels) - 1 entries and model.kernels >= 3 levels; got "
                         f"{len(kernels)} kernels and {len(pools)} pool strides")
    dims = {len(k) for k in kernels + pools}
    if len(dims) != 1 or not dims <= {2, 3}:
        raise ValueError(f"model.kernels / model.pool_strides: every entry needs one value per spatial axis (2 or "
                         f"3), got lengths {sorted(dims)}")
    if any(isinstance(v, int) and v % 2 == 0 for k in kernels for v in k):
        raise ValueError(f"model.kernels {kernels}: kernel sizes must be odd (the output keeps the input's size)")


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
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        features = out.get("features", [32, 64, 128, 256])
        if not isinstance(features, list) or len(features) < 2:
            raise ValueError(f"model.features needs >= 2 widths (encoder stages, then the bottleneck), got {features!r}")
        derived: dict[str, Any] = {"channels": list(features), "strides": [2] * (len(features) - 1)}
        for key, value in derived.items():
            if key in out and list(out[key]) != value and "features" not in out:
                raise ValueError(f"model.{key} is derived from model.features for fedoap_unet (would be {value}), "
                                 f"got {out[key]!r}; set model.features instead")
            out[key] = value
        return out

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


@MODEL_CONFIGS.register("sam")
class SAMConfig(ModelConfig):
    """Segment-Anything with LoRA and pFedSAM's L-MoE (:mod:`fedseg.models.sam`), 2D, binary.

    Defaults are a tiny size for tests and CPU runs; SAM ViT-B (``sam_vit_b_01ec64.pth``) is
    ``image_size 1024, patch_size 16, embed_dim 768, depth 12, num_heads 12, window_size 14,
    global_attn_indexes [2, 5, 8, 11], prompt_embed_dim 256, decoder_heads 8, decoder_mlp_dim 2048,
    iou_head_hidden_dim 256`` (docs/pfedsam.md). ``channels``/``strides`` are fixed to
    ``[embed_dim]``/``[]`` (the model resizes any input to ``image_size`` itself); ``norm`` is
    ``none`` (LayerNorm only).
    """

    name: Literal["sam"] = "sam"
    image_size: int = Field(64, ge=8, description="encoder input side; inputs are resized to it (SAM: 1024)")
    patch_size: int = Field(8, ge=1, description="ViT patch side (SAM: 16)")
    embed_dim: int = Field(32, ge=1, description="ViT width (ViT-B: 768)")
    depth: int = Field(2, ge=1, description="ViT blocks (ViT-B: 12)")
    num_heads: int = Field(2, ge=1, description="ViT heads (ViT-B: 12)")
    mlp_ratio: float = Field(4.0, gt=0, description="ViT MLP width / embed_dim")
    window_size: int = Field(0, ge=0, description="window attention side of non-global blocks (0: all global; SAM: 14)")
    global_attn_indexes: list[int] = Field(default_factory=list, description="global-attention blocks (ViT-B: 2,5,8,11)")
    use_rel_pos: bool = Field(True, description="decomposed relative position terms (SAM: true)")
    prompt_embed_dim: int = Field(32, ge=8, description="neck/prompt/decoder width (SAM: 256)")
    decoder_depth: int = Field(2, ge=1, description="two-way transformer blocks (SAM: 2)")
    decoder_heads: int = Field(2, ge=1, description="decoder heads (SAM: 8)")
    decoder_mlp_dim: int = Field(64, ge=1, description="decoder MLP width (SAM: 2048)")
    iou_head_hidden_dim: int = Field(32, ge=1, description="IoU head width (SAM: 256)")
    mask_in_chans: int = Field(16, ge=4, description="mask-prompt downscaling width (SAM: 16)")
    num_multimask_outputs: int = Field(3, ge=0, description="extra mask tokens (SAM: 3; only the first token is used)")
    prompt_mode: Literal["none", "full_image_box", "box_from_mask"] = Field(
        "none", description="none: learned default embeddings; full_image_box; box_from_mask (boxes passed by the "
        "caller of forward: not available in fedseg's training/evaluation loops)")
    lora_rank: int = Field(4, ge=0, description="LoRA rank on the encoder's qkv (0: no LoRA)")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default: = rank, scale 1)")
    lora_blocks: list[int] | None = Field(None, description="encoder blocks with LoRA (default: all)")
    moe_experts: int = Field(4, ge=0, description="L-MoE experts per adapted block (0: no L-MoE)")
    moe_top_k: int = Field(2, ge=1, description="experts per token")
    moe_bottleneck: int = Field(4, ge=1, description="expert hidden width = embed_dim // moe_bottleneck")
    moe_every: int = Field(1, ge=1, description="L-MoE in blocks 0, k, 2k, ... (1: every block)")
    num_res_units: int = Field(0, ge=0, le=0, description="fixed: not a U-Net")
    norm: Literal["none"] = Field("none", description="fixed: LayerNorm only (no BatchNorm)")
    dropout: float = Field(0.0, ge=0, le=0, description="fixed: no dropout")

    @model_validator(mode="before")
    @classmethod
    def _derive_common(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        dim = out.get("embed_dim", 32)  # a bad embed_dim is reported at its own key
        out["channels"] = [dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else 32]
        out["strides"] = []
        return out

    @model_validator(mode="after")
    def _sizes_fit(self) -> SAMConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size {self.image_size} must be a multiple of model.patch_size "
                             f"{self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.num_heads {self.num_heads} must divide model.embed_dim {self.embed_dim}")
        if self.moe_experts and self.moe_top_k > self.moe_experts:
            raise ValueError(f"model.moe_top_k {self.moe_top_k} exceeds model.moe_experts {self.moe_experts}")
        if (self.prompt_embed_dim // 2) % self.decoder_heads or self.prompt_embed_dim % 8:
            raise ValueError(f"model.prompt_embed_dim {self.prompt_embed_dim} must be a multiple of 8 and of "
                             f"2 * model.decoder_heads ({2 * self.decoder_heads})")
        blocks = [*self.global_attn_indexes, *(self.lora_blocks or [])]
        if any(not 0 <= i < self.depth for i in blocks):
            raise ValueError(f"model.global_attn_indexes / lora_blocks must be block indexes 0..{self.depth - 1}, "
                             f"got {blocks}")
        return self

    def arguments(self) -> dict[str, Any]:
        """The builder's keyword arguments: the SAM fields (not the U-Net fields)."""
        skip = _NOT_ARGUMENTS | {"channels", "strides", "num_res_units", "norm", "dropout"}
        return {key: getattr(self, key) for key in type(self).model_fields if key not in skip}
