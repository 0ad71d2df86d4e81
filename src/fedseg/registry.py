"""A tiny name -> class registry; duplicates raise."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry", "UnknownNameError", "suggest"]

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the allowed names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def suggest(name: str, allowed: list[str]) -> str:
    """Return ' Did you mean X?' for the nearest allowed name, or ''."""
    close = difflib.get_close_matches(name, allowed, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """Maps a name to a registered object (usually a class)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a second registration raises."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise listing the allowed names."""
        try:
            return self._items[name]
        except KeyError:
            allowed = sorted(self._items)
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(allowed)}.{suggest(name, allowed)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
