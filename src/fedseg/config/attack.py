"""The ``attack`` section: simulated malicious sites, for robustness benchmarks only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedseg.config.base import StrictModel

__all__ = ["AttackConfig"]


class AttackConfig(StrictModel):
    """Sites in ``sites`` send a corrupted update (``scale``, ``sign_flip``, ``gaussian``) or train
    on corrupted masks (``label_flip``). Off when ``sites`` is empty."""

    kind: Literal["none", "scale", "sign_flip", "gaussian", "label_flip"] = "none"
    sites: list[str] = Field(default_factory=list)
    scale: float = Field(100.0, description="scale: the factor on the update w_k - w")
    noise_std: float = Field(1.0, ge=0, description="gaussian: std of the noise added to w_k")
