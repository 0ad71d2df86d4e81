"""Deep supervision with nnU-Net's weights, as a wrapper around any ``(logits, target)`` loss.

A deep-supervised model (``fedseg.models.dynunet``) returns its full-resolution logits and, in
training mode, attaches its lower-resolution outputs to them as
:data:`fedseg.types.DEEP_SUPERVISION_OUTPUTS`. :class:`DeepSupervisionLoss` is the trainer's
loss for every run (``fedseg.runtime.build``): on logits without that attribute it *is* the base
loss (same call, same result), so nothing changes for other models; with it, it adds a term per
output against the target downsampled to that output's grid. Every algorithm that scores the
model's logits with the task loss (the trainer's default, ``Trainer.task_loss``) therefore
trains with deep supervision without knowing about it.

nnU-Net v2 (*MIC-DKFZ/nnUNet: nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py* ``_build_loss``,
``nnunetv2/training/loss/deep_supervision.py``): output ``i`` (0 = full resolution) weighs
``1 / 2**i``, the lowest-resolution output weighs 0, and the weights are normalised to sum 1;
each term is the base loss against the segmentation resized by nearest neighbour
(``mode='nearest-exact'``, as batchgeneratorsv2's ``DownsampleSegForDSTransform``). The
weight-0 term is computed too, as nnU-Net's ``DeepSupervisionWrapper`` does, so every head's
parameters take part in the backward pass (zero gradient), which DP-SGD's per-sample gradients
need.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from fedseg.types import DEEP_SUPERVISION_OUTPUTS

__all__ = ["DeepSupervisionLoss", "deep_supervision_weights", "downsample_target"]


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's weight of each output, highest resolution first.

    ``w_i = 1 / 2**i``, the last (lowest-resolution) one set to 0, normalised to sum 1; a single
    output weighs 1. E.g. 3 outputs: ``[1, 0.5, 0] / 1.5 = [2/3, 1/3, 0]``.

    Raises:
        ValueError: ``num_outputs < 1``.
    """
    if num_outputs < 1:
        raise ValueError(f"deep supervision needs >= 1 output, got {num_outputs}")
    if num_outputs == 1:
        return [1.0]
    raw = [1.0 / 2**i for i in range(num_outputs)]
    raw[-1] = 0.0
    total = sum(raw)
    return [w / total for w in raw]


def downsample_target(target: Tensor, size: Sequence[int]) -> Tensor:
    """``target`` ``(B, K, *spatial)`` resized to ``size`` by nearest neighbour, same dtype.

    Labels stay labels (no interpolation between classes), as nnU-Net's ``nearest-exact``.
    """
    if tuple(target.shape[2:]) == tuple(size):
        return target
    resized = F.interpolate(target.float(), size=tuple(int(n) for n in size), mode="nearest-exact")
    return resized.to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """``sum_i w_i * base(output_i, target_i)`` over the model's outputs (nnU-Net's weights).

    Args:
        base: the task loss ``(logits (B, C, *spatial), target (B, K, *spatial)) -> scalar``.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The base loss of ``logits``, plus the weighted terms of the outputs attached to it.

        Args:
            logits: ``(B, C, *spatial)`` full-resolution logits, optionally carrying
                :data:`~fedseg.types.DEEP_SUPERVISION_OUTPUTS` (``(B, C, *spatial_i)`` each).
            target: what ``base`` takes at full resolution (an integer label map
                ``(B, 1, *spatial)`` for the Dice + CE loss).

        Returns:
            Scalar loss tensor.
        """
        extra: tuple[Tensor, ...] = getattr(logits, DEEP_SUPERVISION_OUTPUTS, ())
        if not extra:
            main: Tensor = self.base(logits, target)
            return main
        weights = deep_supervision_weights(1 + len(extra))
        total: Tensor = weights[0] * self.base(logits, target)
        for weight, output in zip(weights[1:], extra, strict=True):
            total = total + weight * self.base(output, downsample_target(target, output.shape[2:]))
        return total

