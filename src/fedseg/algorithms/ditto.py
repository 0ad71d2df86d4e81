"""Ditto (Li et al., ICML 2021): a global model plus a proximally regularised personal model."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedseg.algorithms.base import Algorithm, Batch, ClientContext, LocalTrainer
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.records import ModelKind
from fedseg.types import ClientState, Params

__all__ = ["Ditto"]

_PERSONAL = "personal_model"


@ALGORITHMS.register("ditto")
@dataclass
class Ditto(Algorithm):
    """Ditto: the global model ``w`` trains as in FedAvg. Each client also keeps a personal model
    ``v_k`` (client state; never sent), trained on ``L_k(v) + (lam/2) ||v - w^t||^2`` for
    ``personal_epochs`` epochs (default: the local epochs) and used for personalised evaluation.
    Both start the round from their previous values; ``v_k`` starts from ``w^1`` in round 1."""

    name: ClassVar[str] = "ditto"
    description: ClassVar[str] = "Ditto: FedAvg global model + personal model pulled toward it (lam)"
    judged_by: ClassVar[str] = ModelKind.PERSONAL
    unseen_policy: ClassVar[str] = "the global model"
    lam: float = 1.0
    personal_epochs: int | None = None

    def local_train(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        received = {k: v.to(ctx.device) for k, v in ctx.broadcast.params.items()}
        personal = copy.deepcopy(model)  # holds w^t now
        stored = ctx.state.get(_PERSONAL)
        if stored is not None:
            personal.load_state_dict(stored)
        anchor = [(p, received[n]) for n, p in personal.named_parameters() if n in received]

        def prox(m: nn.Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
            return 0.5 * self.lam * sum(((p - g).pow(2).sum() for p, g in anchor), torch.zeros((), device=logits.device))

        global_metrics = trainer.fit(model)
        personal_metrics = trainer.fit(personal, epochs=self.personal_epochs, extra_loss=prox,
                                       optimizer_key="personal_optimizer")
        ctx.scratch[_PERSONAL] = personal
        return {**global_metrics, "personal_loss": personal_metrics["loss"]}

    def on_round_end(self, model: nn.Module, ctx: ClientContext) -> None:
        personal: nn.Module = ctx.scratch[_PERSONAL]
        ctx.state[_PERSONAL] = {k: v.detach().to("cpu", copy=True) for k, v in personal.state_dict().items()}

    def personal_params(self, global_params: Params, state: ClientState) -> Params | None:
        return state.get(_PERSONAL)
