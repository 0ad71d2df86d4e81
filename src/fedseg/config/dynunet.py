"""The ``dynunet`` model section: nnU-Net's U-Net (MONAI ``DynUNet``), its layout given or derived
by nnU-Net's rule (:mod:`fedseg.config.topology`). Registered in :data:`MODEL_CONFIGS`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from fedseg.config.model import MODEL_CONFIGS, ModelConfig
from fedseg.config.topology import pool_and_conv_props

__all__ = ["DynUNetConfig"]

log = logging.getLogger(__name__)


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
