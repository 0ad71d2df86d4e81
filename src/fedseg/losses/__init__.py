"""Segmentation losses."""

from __future__ import annotations

from torch import nn

from fedseg.config import LossConfig
from fedseg.losses.dice_ce import DiceCE, build_dice_ce

__all__ = ["DiceCE", "build_loss"]


def build_loss(cfg: LossConfig, num_classes: int) -> nn.Module:
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
    return build_dice_ce(cfg, num_classes)
