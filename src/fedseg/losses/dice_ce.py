"""Dice + cross-entropy loss on softmax logits, via MONAI's :class:`~monai.losses.DiceCELoss`."""

from __future__ import annotations

from monai.losses import DiceCELoss
from torch import Tensor, nn

__all__ = ["DiceCE", "build_dice_ce"]


class DiceCE(nn.Module):
    """``dice_weight * Dice + ce_weight * CE`` for multi-class segmentation.

    Dice is MONAI's soft Dice on ``softmax(logits)`` against the one-hot target, computed per
    sample and per class and then averaged. The background class is included (MONAI's
    default): it keeps the Dice term well-behaved on images with little or no foreground, where
    a foreground-only Dice is dominated by its smoothing constant; the CE term already weights
    every voxel equally.

    Args:
        num_classes: number of classes including background; ``logits`` must have this many
            channels.
        dice_weight: weight of the Dice term, >= 0.
        ce_weight: weight of the cross-entropy term, >= 0.

    Raises:
        ValueError: ``num_classes < 2``, a negative weight, or both weights zero.
    """

    def __init__(self, num_classes: int, dice_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
        if dice_weight < 0 or ce_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got dice_weight={dice_weight}, ce_weight={ce_weight}")
        if dice_weight == 0 and ce_weight == 0:
            raise ValueError("dice_weight and ce_weight are both 0, so the loss would be constant; set one > 0")
        self.num_classes = num_classes
        self.loss = DiceCELoss(
            include_background=True,
            to_onehot_y=True,
            softmax=True,
            lambda_dice=dice_weight,
            lambda_ce=ce_weight,
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            logits: ``(B, C, *spatial)`` float, raw network output, ``C == num_classes``.
            target: ``(B, 1, *spatial)`` integer label map with values in ``[0, C)``.

        Returns:
            Scalar loss tensor.

        Raises:
            ValueError: wrong channel count, or ``target`` shape is not ``(B, 1, *spatial)``.
        """
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be (B, {self.num_classes}, *spatial), got shape {tuple(logits.shape)}"
            )
        expected = (logits.shape[0], 1, *logits.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f"target must have shape {expected} (B, 1, *spatial), got {tuple(target.shape)}")
        out: Tensor = self.loss(logits, target.long())
        return out


def build_dice_ce(num_classes: int, *, dice_weight: float = 1.0, ce_weight: float = 1.0) -> DiceCE:
    """Build :class:`DiceCE` from plain arguments (the fields of ``fedseg.config.LossConfig``)."""
    return DiceCE(num_classes, dice_weight=dice_weight, ce_weight=ce_weight)
