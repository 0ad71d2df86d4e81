"""Message and state types shared by every layer.

Messages between server and clients carry only named tensors and scalars, so that any
transport (the in-process engine, Flower records) can carry them. Raw images or masks never
travel: the engine checks every message with :func:`check_message` before it is "sent".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

import torch

__all__ = [
    "Params",
    "Scalar",
    "TensorDict",
    "ClientState",
    "ServerState",
    "ClientUpdate",
    "ClientFailure",
    "Broadcast",
    "MessageKey",
    "MessageError",
    "check_message",
]

Params: TypeAlias = dict[str, torch.Tensor]
"""A (partial) model ``state_dict``: parameter or buffer name -> tensor."""

Scalar: TypeAlias = int | float | bool | str
TensorDict: TypeAlias = dict[str, torch.Tensor]

ClientState: TypeAlias = dict[str, Any]
"""Per-client state that persists across rounds (personal parameters, optimizer state, codec
residuals, a personal model...). Kept by the engine, on CPU, on disk when large. Values must be
tensors, scalars, or (nested) dicts/lists of them so that ``torch.save`` can store them."""

ServerState: TypeAlias = dict[str, Any]
"""Server-side state that persists across rounds; checkpointed with the global model."""


class MessageKey(StrEnum):
    """Record names used when a message is flattened for a transport."""

    PARAMS = "params"
    EXTRAS = "extras"
    METRICS = "metrics"
    CONFIG = "config"
    NUM_EXAMPLES = "num_examples"
    CLIENT_ID = "client_id"


@dataclass
class ClientUpdate:
    """Client -> server message.

    Attributes:
        client_id: the site name.
        params: shared parameters after local training (never the client's local keys).
        num_examples: number of training samples used (the n_k of FedAvg).
        extras: other named tensors (prototypes, key/value banks, control variates...).
        metrics: scalars (training loss, local validation Dice...).
    """

    client_id: str
    params: Params
    num_examples: int
    extras: TensorDict = field(default_factory=dict)
    metrics: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientFailure:
    """What an executor returns in place of a reply when a client did not answer usably: it
    raised, missed the round's deadline, disconnected, or sent something undecodable.

    Attributes:
        client_id: the site name.
        reason: one line for ``metrics.jsonl`` and the report (never data: no paths, no case ids).
    """

    client_id: str
    reason: str


@dataclass
class Broadcast:
    """Server -> client message.

    Attributes:
        params: the global parameters the clients load (may be partial).
        extras: other named tensors (global prototypes, aggregation weights, a second global
            model under a key prefix...).
        config: scalars for this round (round number, learning rate schedule...).
    """

    params: Params
    extras: TensorDict = field(default_factory=dict)
    config: dict[str, Scalar] = field(default_factory=dict)


class MessageError(TypeError):
    """A message holds something other than named tensors and scalars."""


def check_message(message: ClientUpdate | Broadcast) -> None:
    """Raise :class:`MessageError` unless every field is a named tensor or a scalar."""
    kind = type(message).__name__
    tensor_fields = {"params": message.params, "extras": message.extras}
    for fname, mapping in tensor_fields.items():
        if not isinstance(mapping, dict):
            raise MessageError(f"{kind}.{fname} must be a dict of tensors, got {type(mapping).__name__}")
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise MessageError(f"{kind}.{fname} key {key!r} is not a string")
            if not isinstance(value, torch.Tensor):
                raise MessageError(
                    f"{kind}.{fname}[{key!r}] is a {type(value).__name__}; messages carry only tensors"
                )
    scalars = message.metrics if isinstance(message, ClientUpdate) else message.config
    for key, scalar in scalars.items():
        if not isinstance(scalar, (int, float, bool, str)):
            raise MessageError(
                f"{kind} scalar {key!r} is a {type(scalar).__name__}; allowed: int, float, bool, str"
            )
