"""The ``plan`` section: how ``fedseg plan`` fingerprints the sites and what it plans for."""

from __future__ import annotations

from pydantic import Field

from fedseg.config.base import StrictModel

__all__ = ["PlanConfig"]


class PlanConfig(StrictModel):
    """Federated auto-configuration (:mod:`fedseg.planning`, docs/planning.md)."""

    gpu_memory_gb: float | None = Field(None, gt=0, description="plan patch and batch for a GPU with this much "
                                        "memory (nnU-Net's default target: 8); default: the CPU budget")
    cpu_memory_gb: float = Field(2.0, gt=0, description="memory budget (GB) when no gpu_memory_gb is given")
    dp_epsilon: float | None = Field(None, gt=0, description="Laplace noise on each site's case counts with this "
                                     "epsilon (per site, add/remove one case); default: no noise")
    noise_seed: int | None = Field(None, ge=0, lt=2**32, description="seed of that noise (tests); default: fresh "
                                   "OS entropy")
