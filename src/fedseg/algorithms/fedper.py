"""FedPer (Arivazhagan et al., 2019): shared base, personal head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from fedseg.algorithms.base import module_keys
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.algorithms.unseen import MeanOfLocalParts
from fedseg.records import ModelKind

__all__ = ["FedPer", "head_keys"]


def head_keys(model: nn.Module, head: list[str]) -> set[str]:
    """State-dict keys of the head: the modules named in ``head``, or the model's declared
    ``head_module_names`` (the U-Net's last decoder block + classifier) when ``head`` is empty."""
    names = list(head) or list(getattr(model, "head_module_names", ()))
    if not names:
        raise ValueError(
            f"{type(model).__name__} declares no head_module_names; set algorithm.head to module names"
        )
    return module_keys(model, names)


@ALGORITHMS.register("fedper")
@dataclass
class FedPer(MeanOfLocalParts):
    """FedPer: the whole model trains jointly each round; the body is FedAvg'ed and the head
    (``head`` module names; default the model's last decoder block + 1x1 classifier, our
    assumption for U-Nets) never leaves the client. Evaluate the personalised models."""

    name: ClassVar[str] = "fedper"
    description: ClassVar[str] = "FedPer: shared body (FedAvg), personal head kept on each client"
    judged_by: ClassVar[str] = ModelKind.PERSONAL
    unseen_policy: ClassVar[str] = "the global body with the sample-weighted mean of the clients' heads"
    head: list[str] = field(default_factory=list)

    def local_keys(self, model: nn.Module) -> set[str]:
        return head_keys(model, self.head)
