"""nnU-Net's U-Net: MONAI's ``DynUNet`` built from plain arguments (typed config: ``fedseg.config.DynUNetConfig``).

Two changes to MONAI's module, both about how federated code sees it:

* **One name per parameter.** MONAI also registers its blocks a second time under a recursive
  ``skip_layers`` chain, so the state dict holds every encoder/decoder weight twice (e.g.
  ``input_block.*`` and ``skip_layers.downsample.*``). Aggregation, codecs and the local keys of
  FedPer/FedBN work on state-dict keys, so an alias would be sent although its module is local,
  and loading would overwrite a local head with the alias. The chain is dropped here and
  :meth:`DeepSupervisedDynUNet.forward` walks the blocks itself (same computation).
* **Deep supervision without a stacked output.** In training mode with deep supervision MONAI
  returns ``(B, 1 + n, C, *spatial)``, every extra output upsampled to full size, which no loss
  or algorithm of fedseg expects. Here ``forward`` always returns the full-resolution logits
  ``(B, C, *spatial)``; in training mode it attaches the extra outputs, at their own (lower)
  resolutions, to that tensor as :data:`fedseg.types.DEEP_SUPERVISION_OUTPUTS`, where
  ``fedseg.losses.DeepSupervisionLoss`` (the trainer's loss for every run) finds them, so every
  algorithm trains with deep supervision unchanged. Evaluation (``eval()``) computes none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import DynUNet

from fedseg.models.registry import MODELS
from fedseg.types import DEEP_SUPERVISION_OUTPUTS

__all__ = ["DeepSupervisedDynUNet", "build_dynunet", "deep_outputs"]

_SPATIAL_DIMS = (2, 3)
# not in place (nnU-Net's is): Opacus's per-sample gradient hooks (DP-SGD) refuse an in-place op on
# a hooked module's output; same values, one more activation tensor kept per block
_LEAKY_RELU = ("leakyrelu", {"inplace": False, "negative_slope": 0.01})
_INSTANCE_NORM = ("instance", {"affine": True})


def deep_outputs(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The lower-resolution outputs a deep-supervised model attached to ``logits`` (none if absent)."""
    outputs: tuple[torch.Tensor, ...] = getattr(logits, DEEP_SUPERVISION_OUTPUTS, ())
    return outputs


class DeepSupervisedDynUNet(DynUNet):
    """MONAI's :class:`~monai.networks.nets.DynUNet` with one state-dict name per parameter and
    the deep-supervision outputs attached to the logits (see the module docstring).

    Attributes:
        head_module_names: FedPer/FedRep's head: the last decoder block, the 1x1 output block and
            the deep-supervision 1x1 heads (``fedseg.algorithms.fedper.head_keys``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.skip_layers  # the aliasing chain; forward() walks the blocks instead
        last_decoder = f"upsamples.{len(self.upsamples) - 1}"
        heads = ("deep_supervision_heads",) if self.deep_supervision else ()
        self.head_module_names: tuple[str, ...] = (last_decoder, "output_block", *heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` of a ``(B, in_channels, *spatial)`` input; in
        training mode with deep supervision, carrying the extra outputs (highest resolution first)."""
        skips = [self.input_block(x)]
        for down in self.downsamples:
            skips.append(down(skips[-1]))
        out = self.bottleneck(skips[-1])
        supervise = self.training and self.deep_supervision
        extra: list[torch.Tensor | None] = [None] * (self.deep_supr_num if supervise else 0)
        # upsamples[0] is the deepest decoder block; level 0 is the full resolution
        for up, level in zip(self.upsamples, range(len(self.upsamples) - 1, -1, -1), strict=True):
            out = up(out, skips[level])
            if supervise and 1 <= level <= self.deep_supr_num:
                extra[level - 1] = self.deep_supervision_heads[level - 1](out)
        logits: torch.Tensor = self.output_block(out)
        if supervise:
            setattr(logits, DEEP_SUPERVISION_OUTPUTS, tuple(t for t in extra if t is not None))
        return logits


@MODELS.register("dynunet")
def build_dynunet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    kernels: Sequence[Sequence[int]],
    pool_strides: Sequence[Sequence[int]],
    filters: Sequence[int],
    dropout: float = 0.0,
    deep_supervision: bool = True,
    deep_supr_num: int = 1,
    res_block: bool = False,
) -> DeepSupervisedDynUNet:
    """Build :class:`DeepSupervisedDynUNet` (instance norm with affine, leaky ReLU 0.01).

    Every spatial size of an input must be a multiple of the product of ``pool_strides`` along
    its axis; the output has the input's size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels, >= 1.
        out_channels: number of classes including background, >= 1.
        kernels: convolution kernel per level, one odd size per axis (>= 3 levels).
        pool_strides: stride into each lower level, one per axis (``len(kernels) - 1`` entries).
        filters: width per level (``len(kernels)`` entries).
        dropout: dropout rate.
        deep_supervision: attach the lower decoder levels' outputs in training mode.
        deep_supr_num: how many (``1 <= n <= len(kernels) - 2``).
        res_block: residual convolution blocks.

    Returns:
        The untrained network (MONAI's He initialisation, as nnU-Net's).

    Raises:
        ValueError: ``spatial_dims`` is not 2 or 3, a channel count is below 1, or the kernels /
            strides do not match ``spatial_dims`` (the message names ``model.kernels``).
    """
    if spatial_dims not in _SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be one of {_SPATIAL_DIMS}, got {spatial_dims!r}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
    axes = {len(k) for k in (*kernels, *pool_strides)}
    if axes != {spatial_dims}:
        raise ValueError(f"model.kernels / model.pool_strides have {sorted(axes)} values per level, but the data is "
                         f"{spatial_dims}D; give one value per spatial axis (or leave them unset to derive them)")
    if len(filters) != len(kernels):
        raise ValueError(f"model.filters needs {len(kernels)} widths (one per level), got {list(filters)}")
    strides = [[1] * spatial_dims, *[list(s) for s in pool_strides]]
    return DeepSupervisedDynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[list(k) for k in kernels],
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(filters),
        dropout=dropout or None,
        norm_name=_INSTANCE_NORM,
        act_name=_LEAKY_RELU,
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
        res_block=res_block,
    )
