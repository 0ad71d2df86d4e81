"""Frozen parameters (``Algorithm.frozen_keys``): kept out of every optimizer during a client
round, and refused in any update or client state, so they are never sent or stored per client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from fedseg.algorithms.base import Algorithm
from fedseg.types import ClientState, ClientUpdate

__all__ = ["FrozenKeyError", "frozen_parameters", "check_frozen"]


class FrozenKeyError(RuntimeError):
    """An algorithm tried to send or store a parameter it declared frozen."""


@contextmanager
def frozen_parameters(model: nn.Module, keys: set[str]) -> Iterator[None]:
    """``requires_grad`` off for the parameters among ``keys`` (so no optimizer sees them), restored after."""
    turned_off = [p for n, p in model.named_parameters() if n in keys and p.requires_grad]
    for p in turned_off:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in turned_off:
            p.requires_grad_(True)


def _stored_frozen(obj: Any, frozen: set[str], path: str) -> str | None:
    """The first place in (nested dicts/lists of) client state keyed by a frozen key, or None."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            where = f"{path}[{key!r}]"
            if isinstance(key, str) and key in frozen:
                return where
            found = _stored_frozen(value, frozen, where)
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _stored_frozen(value, frozen, f"{path}[{i}]")
            if found:
                return found
    return None


def check_frozen(algorithm: Algorithm, frozen: set[str], update: ClientUpdate | None, state: ClientState) -> None:
    """Raise :class:`FrozenKeyError` if ``update`` (params or extras) or ``state`` holds a frozen key."""
    if not frozen:
        return
    name = type(algorithm).__name__
    if update is not None:
        sent = frozen & (set(update.params) | set(update.extras))
        if sent:
            raise FrozenKeyError(
                f"{name} put frozen keys in its update: {sorted(sent)[:5]}{' ...' if len(sent) > 5 else ''}; frozen "
                "parameters are never sent (every client rebuilds them from the initial model)"
            )
    where = _stored_frozen(state, frozen, "state")
    if where:
        raise FrozenKeyError(
            f"{name} stored a frozen key in client state at {where}; frozen parameters are never stored per client "
            "(drop them from what you keep, e.g. with shared_params(model, algorithm.frozen_keys(model)))"
        )

