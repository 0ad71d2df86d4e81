from __future__ import annotations

import pytest

from fedseg.algorithms import ALGORITHMS, AlgorithmConfigError, build_algorithm
from fedseg.registry import Registry, UnknownNameError


def test_every_algorithm_has_a_description_and_builds_with_defaults() -> None:
    for name in ALGORITHMS.names():
        alg = build_algorithm({"name": name})
        assert type(alg).description
        assert alg.name == name


def test_unknown_hyperparameter_is_rejected_with_suggestion() -> None:
    with pytest.raises(AlgorithmConfigError, match=r"algorithm\.muu.*allowed: mu.*Did you mean 'mu'"):
        build_algorithm({"name": "fedprox", "muu": 0.1})


def test_hyperparameter_types_are_validated() -> None:
    with pytest.raises(AlgorithmConfigError, match=r"algorithm\.mu"):
        build_algorithm({"name": "fedprox", "mu": "a lot"})
    assert build_algorithm({"name": "fedprox", "mu": "0.5"}).mu == 0.5


def test_unknown_algorithm_lists_allowed_names() -> None:
    with pytest.raises(UnknownNameError, match="allowed: .*fedavg.*Did you mean 'fedavg'"):
        build_algorithm({"name": "fedavgg"})


def test_duplicate_registration_raises() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)
