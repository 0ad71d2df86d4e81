"""pFedSAM (Wang, Zhao, Zhuang, ..., Lin; arXiv 2509.15638): personalised federated fine-tuning of
Segment-Anything with a local mixture of experts and global-to-local distillation.

No public code exists; the method follows ``methods.md`` section 4 with the decisions of section 7
(every [ASSUME] is a switch here or in ``model.*``):

* Frozen: SAM's image and prompt encoders (never trained, sent or stored per client).
* Shared ``theta_g``: LoRA on the encoder's qkv + the mask decoder (FedAvg, n_k/N).
* Local ``phi_k``: L-MoE beside the MLP of the chosen encoder blocks (``model.moe_*``), never sent.

Client round (``kd_direction: global_to_local``, the default):

1. Global step: teacher ``T = SAM + theta_g`` (experts off) trains ``theta_g`` on ``L_seg`` for
   ``global_epochs`` (default: the local epochs). ``theta_g`` is uploaded.
2. Local step: student ``S = SAM + theta_g (frozen) + phi_k`` trains ``phi_k`` for ``moe_epochs`` on
   ``L_seg(S) + kd_weight * tau^2 * KL(softmax(T/tau) || softmax(S/tau)) + balance_weight * L_bal``
   (pixel-mean KL over the two classes; ``L_bal``: Switch load balancing, mean over L-MoE blocks).

``kd_direction: local_to_global`` makes S the teacher of step 1 instead (step 2 then has no KD).
With no experts (``model.moe_experts: 0``) the local step is skipped and, with ``kd_weight 0``,
pFedSAM is FedSAM bit for bit. Evaluation: each client's own model (``theta_g`` + its ``phi_k``); a
site that never trained gets the global model without L-MoE (experts at their zero-output init).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fedseg.algorithms.base import Batch, ClientContext, LocalTrainer
from fedseg.algorithms.fedsam import FedSAM, sam_model, trainable_names
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.algorithms.training import ExtraLoss
from fedseg.models.sam import SAM, is_moe_key
from fedseg.records import ModelKind
from fedseg.types import Broadcast, Params, ServerState

__all__ = ["PFedSAM", "distillation_loss"]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * mean over pixels of KL(softmax(teacher/tau) || softmax(student/tau))`` over the
    class axis of logits ``(B, C, *spatial)``; 0 when the logits match."""
    log_s = F.log_softmax(student / tau, dim=1)
    log_t = F.log_softmax(teacher.detach() / tau, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    return kl.mean() * tau * tau


@ALGORITHMS.register("pfedsam")
@dataclass
class PFedSAM(FedSAM):
    """pFedSAM: FedSAM's shared LoRA + decoder, plus a personal L-MoE trained with distillation."""

    name: ClassVar[str] = "pfedsam"
    description: ClassVar[str] = "pFedSAM: LoRA + decoder FedAvg'ed, local L-MoE trained with global-to-local KD"
    judged_by: ClassVar[str] = ModelKind.PERSONAL
    unseen_policy: ClassVar[str] = "the global model without L-MoE (experts at their zero-output init)"
    kd_weight: float = 0.5
    tau: float = 2.0
    kd_direction: Literal["global_to_local", "local_to_global"] = "global_to_local"
    balance_weight: float = 0.01
    global_epochs: int | None = None
    moe_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.tau <= 0 or self.kd_weight < 0 or self.balance_weight < 0:
            raise ValueError(f"algorithm pfedsam needs tau > 0, kd_weight >= 0 and balance_weight >= 0, got "
                             f"tau={self.tau}, kd_weight={self.kd_weight}, balance_weight={self.balance_weight}")

    def frozen_keys(self, model: nn.Module) -> set[str]:
        return sam_model(model, self.name).frozen_state_keys()

    def local_keys(self, model: nn.Module) -> set[str]:
        return sam_model(model, self.name).moe_state_keys()

    def broadcast(self, rnd: int, global_params: Params, server_state: ServerState) -> Broadcast:
        """``theta_g`` only: the server's copy of the L-MoE (its untrained init, as FedPer's head) is
        never sent; every client starts the round from the initial model, then its own experts."""
        params = {k: v for k, v in global_params.items() if not is_moe_key(k)}
        return Broadcast(params=params, config=self.round_config(rnd, server_state))

    def local_train(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        sam = sam_model(model, self.name)
        local = trainable_names(model, self.local_keys(model))
        to_local = self.kd_direction == "global_to_local"
        distil = bool(local) and self.kd_weight > 0
        with sam.experts(False):
            metrics = trainer.fit(model, epochs=self.global_epochs,
                                  trainable=trainable_names(model, self.shared_keys(model)),
                                  extra_loss=self._kd(sam, teacher_experts=True) if distil and not to_local else None)
        if not local:
            return metrics
        with sam.experts(True):
            local_metrics = trainer.fit(model, epochs=self.moe_epochs, trainable=local, optimizer_key="moe_optimizer",
                                        extra_loss=self._local_extra(sam, kd=distil and to_local))
        return {**metrics, "moe_loss": local_metrics["loss"], "moe_task_loss": local_metrics["task_loss"]}

    def _kd_term(self, sam: SAM, batch: Batch, logits: torch.Tensor, *, teacher_experts: bool) -> torch.Tensor:
        """``kd_weight * tau^2 KL(teacher || student)``, the teacher being ``sam`` with its experts
        ``teacher_experts`` (no gradient) on the same (augmented) batch."""
        with torch.no_grad(), sam.experts(teacher_experts):
            teacher = sam(batch.image)
        return self.kd_weight * distillation_loss(logits, teacher, self.tau)

    def _kd(self, sam: SAM, *, teacher_experts: bool) -> ExtraLoss:
        """The KD term as the trainer's extra loss."""

        def loss(m: nn.Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
            return self._kd_term(sam, batch, logits, teacher_experts=teacher_experts)

        return loss

    def _local_extra(self, sam: SAM, *, kd: bool) -> ExtraLoss:
        """The local step's extra terms: load balancing, plus KD from the expert-free teacher."""

        def loss(m: nn.Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
            balance = sam.balance_loss()  # of this step's student forward: read before the teacher's
            total = self.balance_weight * balance if balance is not None else torch.zeros((), device=logits.device)
            if kd:
                total = total + self._kd_term(sam, batch, logits, teacher_experts=False)
            return total

        return loss
