"""FedBN (Li et al., ICLR 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fedseg.algorithms.base import norm_layer_keys
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.algorithms.unseen import MeanOfLocalParts
from fedseg.records import ModelKind

__all__ = ["FedBN"]


@ALGORITHMS.register("fedbn")
@dataclass
class FedBN(MeanOfLocalParts):
    """FedBN: FedAvg except that every normalisation layer (affine parameters and running
    statistics), selected by module type, stays on the client. A model without normalisation
    layers makes this FedAvg. Evaluate the personalised models: the global model's norm layers
    are never trained."""

    name: ClassVar[str] = "fedbn"
    description: ClassVar[str] = "FedBN: FedAvg with normalisation layers kept local (by module type)"
    judged_by: ClassVar[str] = ModelKind.PERSONAL
    unseen_policy: ClassVar[str] = "the global model with the sample-weighted mean of the clients' norm layers"

    def local_keys(self, model: nn.Module) -> set[str]:
        return norm_layer_keys(model)
