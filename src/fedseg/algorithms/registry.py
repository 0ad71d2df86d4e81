"""The algorithm registry and the typed construction of an algorithm from a config mapping."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fedseg.algorithms.base import Algorithm
from fedseg.registry import Registry, suggest

__all__ = ["ALGORITHMS", "build_algorithm", "AlgorithmConfigError"]

ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")


class AlgorithmConfigError(ValueError):
    """Bad algorithm hyperparameters; the message names the key and what is allowed."""


def build_algorithm(spec: Mapping[str, Any]) -> Algorithm:
    """Instantiate ``spec['name']`` with the remaining keys as typed hyperparameters.

    Unknown keys raise, naming the allowed ones; values are validated against the dataclass
    field types (pydantic), so ``mu: "abc"`` fails with the field name.
    """
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise AlgorithmConfigError(f"algorithm.name must be a string; allowed: {', '.join(ALGORITHMS.names())}")
    cls = ALGORITHMS.get(name)
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in params if k not in allowed]
    if unknown:
        hints = "".join(suggest(k, allowed) for k in unknown)
        raise AlgorithmConfigError(
            f"unknown key(s) for algorithm {name!r}: {', '.join('algorithm.' + k for k in unknown)}; "
            f"allowed: {', '.join(allowed) or '(none)'}.{hints}"
        )
    try:
        validated = TypeAdapter(cls).validate_python(params)
    except ValidationError as err:
        msgs = [f"algorithm.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in err.errors()]
        raise AlgorithmConfigError("; ".join(msgs)) from None
    if not isinstance(validated, cls):
        validated = cls(**params)
    return validated
