"""One client's round: the hook sequence shared by every engine."""

from __future__ import annotations

from torch import nn

from fedseg.algorithms.base import Algorithm, ClientContext, LocalTrainer
from fedseg.types import Broadcast, ClientState, ClientUpdate

__all__ = ["run_client_round", "run_client_personalization", "overrides_personalize", "PrivacyError"]


class PrivacyError(RuntimeError):
    """An algorithm tried to send a parameter it declared local."""


def run_client_round(
    algorithm: Algorithm,
    model: nn.Module,
    *,
    client_id: str,
    rnd: int,
    broadcast: Broadcast,
    state: ClientState,
    trainer: LocalTrainer,
) -> ClientUpdate:
    """Run the client hooks for one round and return the message for the server.

    ``state`` is updated in place (the caller persists it). Raises :class:`PrivacyError` if the
    update carries any of the algorithm's local keys.
    """
    ctx = ClientContext(client_id=client_id, round=rnd, broadcast=broadcast, state=state, device=trainer.device)
    algorithm.on_round_start(model, ctx)
    metrics = algorithm.local_train(model, ctx, trainer)
    update = algorithm.client_update(model, ctx, trainer.num_examples, metrics)
    algorithm.on_round_end(model, ctx)
    leaked = algorithm.local_keys(model) & set(update.params)
    if leaked:
        raise PrivacyError(
            f"{type(algorithm).__name__} put local keys in its update: {sorted(leaked)[:5]}"
            f"{' ...' if len(leaked) > 5 else ''}"
        )
    return update


def overrides_personalize(algorithm: Algorithm) -> bool:
    """Whether the algorithm has a post-federation local phase."""
    return type(algorithm).personalize is not Algorithm.personalize


def run_client_personalization(
    algorithm: Algorithm,
    model: nn.Module,
    *,
    client_id: str,
    rnd: int,
    broadcast: Broadcast,
    state: ClientState,
    trainer: LocalTrainer,
) -> dict[str, float]:
    """The local phase after the last round: load the final model, ``personalize``, keep local keys."""
    ctx = ClientContext(client_id=client_id, round=rnd, broadcast=broadcast, state=state, device=trainer.device)
    algorithm.on_round_start(model, ctx)
    metrics = algorithm.personalize(model, ctx, trainer) or {}
    algorithm.on_round_end(model, ctx)
    return metrics
