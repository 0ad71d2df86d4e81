"""Models for sites that never trained, shared by the personalised methods' ``unseen_params``.

A method that keeps part of its model on each client has no trained value of that part for a
new site. FedBN, FedPer and FedRep use the sample-weighted mean of the clients' local parts
(:func:`mean_local_params`); local-only uses the single-site model with the best validation
Dice on its own site (:func:`best_single_site`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fedseg.algorithms.base import Algorithm, StateKey, weighted_average
from fedseg.records import Selection
from fedseg.types import ClientState, Params

__all__ = ["MeanOfLocalParts", "mean_local_params", "best_single_site", "selected_val_dice"]


def mean_local_params(
    algorithm: Algorithm,
    global_params: Params,
    client_states: Mapping[str, ClientState],
    num_examples: Mapping[str, int],
    selection: str = Selection.LAST,
) -> Params | None:
    """``global_params`` with each local key (:attr:`StateKey.LOCAL_PARAMS`) replaced by the
    sample-weighted mean of the clients' personalised values under ``selection`` (running
    statistics included; integer buffers take the maximum, as in :func:`weighted_average`).
    None when no client holds local parameters."""
    parts: list[Params] = []
    weights: list[float] = []
    for client in sorted(client_states):
        state = client_states[client]
        local = state.get(StateKey.LOCAL_PARAMS)
        personal = algorithm.personal_model(global_params, state, selection)
        if not local or personal is None or num_examples.get(client, 0) <= 0:
            continue
        parts.append({k: personal[k] for k in local})
        weights.append(float(num_examples[client]))
    if not parts:
        return None
    return {**global_params, **weighted_average(parts, weights)}


def selected_val_dice(state: ClientState, selection: str) -> float:
    """The validation Dice (on the client's own split) of its personalised model under
    ``selection``: its best (``best_val``) or latest score; NaN when it was never validated."""
    entry = state.get(StateKey.BEST_VAL) if selection == Selection.BEST_VAL else None
    entry = entry if entry is not None else state.get(StateKey.LAST_VAL)
    return float(entry["dice"]) if entry is not None else float("nan")


def best_single_site(
    algorithm: Algorithm, global_params: Params, client_states: Mapping[str, ClientState], selection: str
) -> Params | None:
    """The personalised model (under ``selection``) of the client with the highest validation
    Dice on its own site; ties go to the first client by name. None when no client has a
    validated personalised model."""
    best: tuple[float, Params] | None = None
    for client in sorted(client_states):
        state = client_states[client]
        dice = selected_val_dice(state, selection)
        personal = algorithm.personal_model(global_params, state, selection)
        if personal is None or math.isnan(dice):
            continue
        if best is None or dice > best[0]:
            best = (dice, personal)
    return None if best is None else best[1]


class MeanOfLocalParts(Algorithm):
    """Base of the methods whose unseen-site model is the global model with the sample-weighted
    mean of the clients' local parts (FedBN: norm layers, FedPer/FedRep: heads)."""

    def unseen_params(self, global_params: Params, client_states: Mapping[str, ClientState],
                      num_examples: Mapping[str, int], selection: str = Selection.LAST) -> Params | None:
        """:func:`mean_local_params`."""
        return mean_local_params(self, global_params, client_states, num_examples, selection)
