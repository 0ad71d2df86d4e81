"""The transport contract between :class:`~fedseg.engine.server.FederationServer` and the clients
(:class:`ClientExecutor`), and the seeded client sampling every engine shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from fedseg.types import ClientFailure

__all__ = ["ClientExecutor", "FitReply", "sample_clients"]

FitReply = tuple[bytes, dict[str, Any]]
"""One client's answer to ``fit``: the encoded :class:`~fedseg.types.ClientUpdate` and its train record."""


def sample_clients(clients: Sequence[str], fraction: float, min_clients: int, seed: int, rnd: int) -> list[str]:
    """The clients of round ``rnd``: ``max(min_clients, round(fraction*K))`` of K, seeded."""
    k = min(len(clients), max(min_clients, int(round(fraction * len(clients)))))
    if k == len(clients):
        return list(clients)
    rng = np.random.default_rng([seed, rnd])
    chosen = sorted(rng.choice(len(clients), size=k, replace=False).tolist())
    return [clients[i] for i in chosen]


class ClientExecutor(Protocol):
    """Delivers encoded messages to clients and returns their answers (the transport).

    Every reply is the serialized message the client sent (:mod:`fedseg.engine.wire` bytes), so
    the server counts what crosses the wire in both directions.

    The contract, for ``fit``, ``evaluate`` and ``personalize`` alike: one entry per requested
    client, either its reply or a :class:`~fedseg.types.ClientFailure` when that client raised,
    missed ``federation.round_timeout``, disconnected or answered with an error. An executor never
    raises for one client's failure, and persists a client's state only when its call succeeded
    (a failed client keeps the state it had before the round). The server decides what a failure
    means (quorum, retry, log).
    """

    def fit(self, rnd: int, clients: list[str], payload: bytes) -> Mapping[str, FitReply | ClientFailure]:
        """Local training on each client: ``{client: (encoded ClientUpdate, train record)}``."""
        ...

    def evaluate(self, rnd: int, clients: list[str], payload: bytes, split: str) -> Mapping[str, bytes | ClientFailure]:
        """Evaluation records (global and personalised models) from each client, as the reply it
        sent: ``wire.encode_records(records)``."""
        ...

    def personalize(self, rnd: int, clients: list[str], payload: bytes) -> Mapping[str, bytes | ClientFailure]:
        """The algorithm's post-federation local phase on each client; each reply is
        ``wire.encode_records([record])``."""
        ...

    def state_snapshot(self) -> Any:
        """Client states to checkpoint with the server (None when clients keep their own)."""
        ...

    def restore(self, snapshot: Any) -> None:
        """Restore client states from a checkpoint's snapshot."""
        ...

    def committed(self) -> None:
        """Called after a checkpoint is on disk (e.g. to prune superseded state files)."""
        ...
