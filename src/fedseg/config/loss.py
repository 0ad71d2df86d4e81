"""The ``loss`` section."""

from __future__ import annotations

from pydantic import Field

from fedseg.config.base import StrictModel

__all__ = ["LossConfig"]


class LossConfig(StrictModel):
    """Dice + cross-entropy: ``dice_weight * Dice + ce_weight * CE``."""

    dice_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
