"""LG-FedAvg (Liang et al., "Think Locally, Act Globally", 2020): local representation, global head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from fedseg.algorithms.base import module_keys
from fedseg.algorithms.fedper import head_keys
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.algorithms.unseen import MeanOfLocalParts
from fedseg.records import ModelKind

__all__ = ["LGFedAvg"]


@ALGORITHMS.register("lgfedavg")
@dataclass
class LGFedAvg(MeanOfLocalParts):
    """LG-FedAvg: FedPer's split reversed. Each client keeps its representation layers (never
    sent) and only the top layers are FedAvg'ed (weights ``n_k``); the whole model trains jointly
    each round. Evaluate the personalised models.

    Which layers are local is configurable:

    * ``local``: explicit module names (exact ``named_modules`` paths) that stay local;
    * otherwise every state-dict entry outside the shared head is local, the head being the
      modules in ``head`` (default: the model's ``head_module_names``; the U-Net's last decoder
      block + classifier for ``unet``, the 1x1 classifier for ``fedbcs_unet``/``fedoap_unet``).

    For a U-Net "representation" is [ASSUME] the encoder *and* the decoder up to the head: the
    paper's models are classifiers whose global part is the last layers.
    """

    name: ClassVar[str] = "lgfedavg"
    description: ClassVar[str] = "LG-FedAvg: personal representation layers, shared head (FedAvg)"
    judged_by: ClassVar[str] = ModelKind.PERSONAL
    unseen_policy: ClassVar[str] = "the global head with the sample-weighted mean of the clients' representation layers"
    head: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.head and self.local:
            raise ValueError("set algorithm.local (the local modules) or algorithm.head (the shared modules), not both")

    def local_keys(self, model: nn.Module) -> set[str]:
        if self.local:
            return module_keys(model, self.local)
        return set(model.state_dict()) - head_keys(model, self.head)
