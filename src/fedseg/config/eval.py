"""The ``eval`` section: validation cadence, checkpoint selection, sliding-window inference."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedseg.config.base import StrictModel

__all__ = ["SlidingWindowConfig", "EvalConfig"]


class SlidingWindowConfig(StrictModel):
    """Whole-image prediction by MONAI's sliding-window inference (used when a ROI is known)."""

    roi_size: list[int] | None = Field(
        None, description="window size; default: train.patch_size. Without both, whole images go through the model"
    )
    overlap: float = Field(0.5, ge=0, lt=1)
    mode: Literal["gaussian", "constant"] = "gaussian"
    batch_size: int = Field(4, ge=1, description="windows per forward pass")


class EvalConfig(StrictModel):
    every: int = Field(1, ge=1, description="validate every k rounds (and always at the last)")
    batch_size: int = Field(16, ge=1)
    personalized: bool = True
    select: Literal["best_val", "last"] = Field(
        "best_val",
        description="checkpoint scored on test: the round with the best mean validation Dice (per client for "
        "personalised models), or the last round",
    )
    sliding_window: SlidingWindowConfig = Field(default_factory=SlidingWindowConfig)
