"""FedAvg (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

from dataclasses import dataclass

from fedseg.algorithms.base import Algorithm
from fedseg.algorithms.registry import ALGORITHMS

__all__ = ["FedAvg"]


@ALGORITHMS.register("fedavg")
@dataclass
class FedAvg(Algorithm):
    """FedAvg: clients train the whole model; ``w^{t+1} = sum_k (n_k/N) w_k``. Nothing stays local."""
