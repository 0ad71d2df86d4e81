"""Segmentation losses."""

from __future__ import annotations

from typing import Protocol

from torch import nn

from fedseg.losses.deep_supervision import DeepSupervisionLoss
from fedseg.losses.dice_ce import DiceCE, build_dice_ce

__all__ = ["DeepSupervisionLoss", "DiceCE", "LossSpec", "build_loss"]


class LossSpec(Protocol):
    """What :func:`build_loss` needs of the loss config (``fedseg.config.LossConfig`` is one)."""

    @property
    def dice_weight(self) -> float: ...

    @property
    def ce_weight(self) -> float: ...


def build_loss(cfg: LossSpec, num_classes: int) -> nn.Module:
    """Build the training loss ``cfg.dice_weight * Dice + cfg.ce_weight * CE``.

    Args:
        cfg: loss section of the run config.
        num_classes: number of classes including background.

    Returns:
        A module ``loss(logits (B, C, *spatial) float, target (B, 1, *spatial) int64) -> scalar``;
        see :class:`DiceCE`.

    Raises:
        ValueError: ``num_classes < 2`` or both weights zero.
    """
    return build_dice_ce(num_classes, dice_weight=cfg.dice_weight, ce_weight=cfg.ce_weight)
