"""FedAvg (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from fedseg.algorithms.base import Algorithm, Weighting
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.types import ClientUpdate, Params, ServerState

__all__ = ["FedAvg"]


@ALGORITHMS.register("fedavg")
@dataclass
class FedAvg(Algorithm):
    """FedAvg: clients train the whole model; ``w^{t+1} = sum_k (n_k/N) w_k``. Nothing stays local.

    Args:
        weighting: ``n_k`` (default, the paper's sample-count weights) or ``uniform``
            (``w^{t+1} = (1/K) sum_k w_k``, ours): a control that re-weights the clients equally and
            changes nothing else, so a benchmark can tell an adaptive weighting scheme (e.g.
            FedSegNet's AAM, near-uniform on BUS-BRA) from plain re-weighting.
    """

    name: ClassVar[str] = "fedavg"
    weighting: Literal["n_k", "uniform"] = "n_k"

    def aggregation_weights(self, updates: Sequence[ClientUpdate], global_params: Params,
                            server_state: ServerState) -> Weighting:
        if self.weighting == "uniform":
            return Weighting([1.0] * len(updates))
        return super().aggregation_weights(updates, global_params, server_state)
