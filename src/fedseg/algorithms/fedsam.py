"""FedSAM / FedMSA-style baseline (FedFMS, MICCAI'24; methods.md section 6): federated
parameter-efficient fine-tuning of Segment-Anything.

The SAM image and prompt encoders are frozen (never trained, sent or stored per client: every
process rebuilds them from the initial model, i.e. ``model.init_checkpoint``); LoRA on the
encoder's qkv and the whole mask decoder train locally and are FedAvg'ed with weights n_k/N. No
experts, no distillation. Needs ``model.name: sam``; a model built with L-MoE keeps its experts
frozen at their init, where they add exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fedseg.algorithms.base import Algorithm, ClientContext, LocalTrainer
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.models.sam import SAM

__all__ = ["FedSAM", "sam_model", "trainable_names"]


def sam_model(model: nn.Module, algorithm: str) -> SAM:
    """``model`` as a :class:`~fedseg.models.sam.SAM`, or a ValueError naming the fix."""
    if not isinstance(model, SAM):
        raise ValueError(f"algorithm {algorithm} fine-tunes Segment-Anything: set model.name: sam "
                         f"(got a {type(model).__name__})")
    return model


def trainable_names(model: nn.Module, keys: set[str]) -> set[str]:
    """Names of the parameters among the state-dict ``keys``."""
    return {n for n, _ in model.named_parameters() if n in keys}


@ALGORITHMS.register("fedsam")
@dataclass
class FedSAM(Algorithm):
    """FedSAM-LoRA / FedMSA: ``theta_g`` = LoRA + mask decoder, ``theta_g^{t+1} = sum_k (n_k/N) theta_k^t``.

    Client: train ``theta_g`` with the task loss for the local epochs, encoders frozen.
    Upload: ``|LoRA| + |decoder|`` tensors only. Evaluation: the global model on every site.
    """

    name: ClassVar[str] = "fedsam"
    description: ClassVar[str] = "FedSAM: frozen SAM encoders, LoRA + mask decoder FedAvg'ed (no experts, no KD)"

    def frozen_keys(self, model: nn.Module) -> set[str]:
        sam = sam_model(model, self.name)
        return sam.frozen_state_keys() | sam.moe_state_keys()

    def shared_keys(self, model: nn.Module) -> set[str]:
        """State-dict keys that travel: neither frozen nor local (LoRA + mask decoder)."""
        return set(model.state_dict()) - self.frozen_keys(model) - self.local_keys(model)

    def local_train(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        sam = sam_model(model, self.name)
        with sam.experts(False):
            return trainer.fit(model, trainable=trainable_names(model, self.shared_keys(model)))
