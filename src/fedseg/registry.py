"""A tiny name -> class registry; duplicates raise."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

__all__ = ["Registry", "UnknownNameError", "suggest", "build_typed"]

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the allowed names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def suggest(name: str, allowed: list[str]) -> str:
    """Return ' Did you mean X?' for the nearest allowed name, or ''."""
    close = difflib.get_close_matches(name, allowed, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def build_typed(cls: type[T], params: Mapping[str, Any], *, kind: str, name: str, where: str,
                error: type[Exception]) -> T:
    """Instantiate the dataclass ``cls`` from config ``params`` (its hyperparameters).

    Unknown keys raise ``error`` naming each as ``where.key`` with the allowed ones and a
    did-you-mean; values are validated against the field types (pydantic), and a ``ValueError``
    from ``__post_init__`` range checks is re-raised as ``error`` prefixed with ``where``.

    Args:
        kind, name: for the message, e.g. ``"codec"``, ``"topk"``.
        where: the config path of ``params`` (``"algorithm"``, ``"codec.up[0]"``).
    """
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = [k for k in params if k not in allowed]
    if unknown:
        hints = "".join(suggest(k, allowed) for k in unknown)
        raise error(
            f"unknown key(s) for {kind} {name!r}: {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"allowed: {', '.join(allowed) or '(none)'}.{hints}"
        )
    try:
        built = TypeAdapter(cls).validate_python(dict(params))
    except ValidationError as err:
        msgs = [
            f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
            if e["loc"]
            else f"{where}: {e['msg']}"
            for e in err.errors()
        ]
        raise error("; ".join(msgs)) from None
    except ValueError as err:  # __post_init__ range checks
        raise error(f"{where}: {err}") from None
    return built if isinstance(built, cls) else cls(**params)


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
