"""FedProx (Li et al., MLSys 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedseg.algorithms.base import Algorithm, Batch, ClientContext
from fedseg.algorithms.registry import ALGORITHMS

__all__ = ["FedProx"]


@ALGORITHMS.register("fedprox")
@dataclass
class FedProx(Algorithm):
    """FedProx: local objective ``L_k(w) + (mu/2) ||w - w^t||^2``; aggregation as FedAvg.

    The proximal term covers every trainable parameter received from the server. With
    ``mu = 0`` the method is FedAvg bit for bit (the term is still computed, and is exactly 0).
    """

    name: ClassVar[str] = "fedprox"
    description: ClassVar[str] = "FedProx: FedAvg + proximal term (mu/2)||w - w_global||^2 on clients"
    mu: float = 0.01

    def on_round_start(self, model: nn.Module, ctx: ClientContext) -> None:
        super().on_round_start(model, ctx)
        received = ctx.broadcast.params
        ctx.scratch["prox_anchor"] = [
            (p, received[n].to(ctx.device)) for n, p in model.named_parameters() if n in received
        ]

    def extra_loss(
        self, model: nn.Module, batch: Batch, logits: torch.Tensor, ctx: ClientContext
    ) -> torch.Tensor | None:
        anchor = ctx.scratch["prox_anchor"]
        prox = torch.zeros((), device=logits.device)
        for p, g in anchor:
            if p.requires_grad:
                prox = prox + (p - g).pow(2).sum()
        return 0.5 * self.mu * prox
