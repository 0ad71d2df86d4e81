"""FedRep (Collins et al., ICML 2021): personal head trained first, then the shared body."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from fedseg.algorithms.base import ClientContext, LocalTrainer
from fedseg.algorithms.fedper import head_keys
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.algorithms.unseen import MeanOfLocalParts
from fedseg.records import ModelKind

__all__ = ["FedRep"]


@ALGORITHMS.register("fedrep")
@dataclass
class FedRep(MeanOfLocalParts):
    """FedRep: same body/head split as FedPer, but each round first trains only the local head for
    ``head_epochs`` epochs, then only the shared body for ``body_epochs`` (default: the configured
    local epochs). The body is FedAvg'ed; the head never leaves the client."""

    name: ClassVar[str] = "fedrep"
    description: ClassVar[str] = "FedRep: train personal head, then shared body; aggregate the body"
    judged_by: ClassVar[str] = ModelKind.PERSONAL
    unseen_policy: ClassVar[str] = "the global body with the sample-weighted mean of the clients' heads"
    head: list[str] = field(default_factory=list)
    head_epochs: int = 5
    body_epochs: int | None = None

    def local_keys(self, model: nn.Module) -> set[str]:
        return head_keys(model, self.head)

    def local_train(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        head = self.local_keys(model)
        params = {n for n, _ in model.named_parameters()}
        head_metrics = trainer.fit(model, epochs=self.head_epochs, trainable=head & params,
                                   optimizer_key="head_optimizer")
        body_metrics = trainer.fit(model, epochs=self.body_epochs, trainable=params - head,
                                   optimizer_key="body_optimizer")
        return {**body_metrics, "head_loss": head_metrics["loss"]}
