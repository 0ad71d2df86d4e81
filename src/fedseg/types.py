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
    "check_extras",
    "DATA_FILE_SUFFIXES",
    "extras_allowed",
    "looks_like_path",
    "DEEP_SUPERVISION_OUTPUTS",
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


DATA_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".npy", ".npz", ".dcm",
                      ".mha", ".mhd", ".nrrd")
"""Suffixes of image, mask and array files: a string ending in one names a data file."""


def looks_like_path(text: str) -> bool:
    """True when ``text`` could name a file: it holds ``/`` or ``\\``, or ends in a data-file suffix
    (case-insensitive), e.g. ``GE_Logiq7/images/case_001.png`` or ``case_001.nii.gz``."""
    return "/" in text or "\\" in text or text.lower().endswith(DATA_FILE_SUFFIXES)


def check_message(message: ClientUpdate | Broadcast) -> None:
    """Raise :class:`MessageError` unless every field is a named tensor or a scalar, and (client ->
    server) no string scalar or metric name looks like a file path (:func:`looks_like_path`): a
    site's file names never leave it."""
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
        if isinstance(message, ClientUpdate) and (
            looks_like_path(str(key)) or (isinstance(scalar, str) and looks_like_path(scalar))
        ):
            raise MessageError(
                f"{kind} from {message.client_id!r}: metric {str(key)[:40]!r} looks like a file path (a '/' or '\\', "
                "or an image suffix); file names and case ids never leave a site"
            )


def extras_allowed(key: str, allowed: frozenset[str]) -> bool:
    """Whether extras ``key`` is on an algorithm's allow-list: an entry ending in ``.`` is a
    prefix (``net2.`` admits a second network's state dict), any other entry an exact key."""
    return key in allowed or any(a.endswith(".") and key.startswith(a) for a in allowed)


def check_extras(message: ClientUpdate | Broadcast, allowed: frozenset[str]) -> None:
    """Refuse extras keys that are not on the allow-list (``Algorithm.message_extras``).

    The server's update validation calls it for every update, before aggregation, so a client
    cannot smuggle other tensors (an image batch, a mask) under an extras key.

    Raises:
        MessageError: names the sender, the first unexpected keys and the allowed ones.
    """
    unexpected = sorted(k for k in message.extras if not extras_allowed(k, allowed))
    if unexpected:
        sender = f" from {message.client_id!r}" if isinstance(message, ClientUpdate) else ""
        shown = ", ".join(repr(k) for k in unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise MessageError(
            f"{type(message).__name__}{sender}: extras {shown} not on the algorithm's allow-list "
            f"({', '.join(sorted(allowed)) or 'none: it sends no extras'})"
        )


DEEP_SUPERVISION_OUTPUTS = "deep_supervision_outputs"
"""Attribute a deep-supervised model sets on the logits it returns in training mode: a tuple of
lower-resolution logits ``(B, C, *spatial_i)``, highest resolution first. The training loss
(``fedseg.losses.DeepSupervisionLoss``) reads it, so the logits stay one plain tensor for every
algorithm and loss (``fedseg.models.dynunet``)."""
