"""Local-only training: the no-federation baseline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fedseg.algorithms.base import Algorithm
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.algorithms.unseen import best_single_site
from fedseg.records import ModelKind, Selection
from fedseg.types import Broadcast, ClientState, Params, ServerState

__all__ = ["LocalOnly"]


@ALGORITHMS.register("local")
@dataclass
class LocalOnly(Algorithm):
    """Local-only: each site trains its own model on its own data; nothing is ever sent.

    Every parameter is a local key, so client messages carry no weights (only n_k and the loss)
    and there is no global model. Each site is evaluated with its own model.
    """

    name: ClassVar[str] = "local"
    description: ClassVar[str] = "Local-only: every site trains alone, nothing is shared (lower reference)"
    has_global_model: ClassVar[bool] = False
    judged_by: ClassVar[str] = ModelKind.PERSONAL
    unseen_policy: ClassVar[str] = "the single-site model with the best validation Dice on its own site"
    optimizer_state: ClassVar[str] = "persist"  # ordinary training: Adam is not restarted every round

    def local_keys(self, model: nn.Module) -> set[str]:
        return set(model.state_dict())

    def broadcast(self, rnd: int, global_params: Params, server_state: ServerState) -> Broadcast:
        # Every client starts from the same seeded initial model and then keeps its own.
        return Broadcast(params={}, config=self.round_config(rnd, server_state))

    def unseen_params(self, global_params: Params, client_states: Mapping[str, ClientState],
                      num_examples: Mapping[str, int], selection: str = Selection.LAST) -> Params | None:
        """The single-site model with the best validation Dice on its own site
        (:func:`best_single_site`): the only kind of model this method trains, chosen on
        validation data only."""
        return best_single_site(self, global_params, client_states, selection)
