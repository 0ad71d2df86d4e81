"""The algorithm registry and the typed construction of an algorithm from a config mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedseg.algorithms.base import Algorithm
from fedseg.registry import Registry, build_typed

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
    return build_typed(ALGORITHMS.get(name), params, kind="algorithm", name=name, where="algorithm",
                       error=AlgorithmConfigError)
