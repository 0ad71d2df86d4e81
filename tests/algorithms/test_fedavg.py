from __future__ import annotations

import pytest
import torch

from fedseg.algorithms import AlgorithmConfigError, build_algorithm
from fedseg.types import ClientUpdate


def _updates() -> list[ClientUpdate]:
    return [ClientUpdate("a", {"w": torch.tensor([1.0, 0.0])}, num_examples=1),
            ClientUpdate("b", {"w": torch.tensor([4.0, 2.0])}, num_examples=3),
            ClientUpdate("c", {"w": torch.tensor([7.0, 1.0])}, num_examples=96)]


def test_uniform_weighting_is_the_plain_mean() -> None:
    alg = build_algorithm({"name": "fedavg", "weighting": "uniform"})
    new = alg.aggregate(1, _updates(), {"w": torch.zeros(2)}, {}).params
    assert new["w"].tolist() == pytest.approx([(1 + 4 + 7) / 3, (0 + 2 + 1) / 3])


def test_default_weighting_is_n_k() -> None:
    alg = build_algorithm({"name": "fedavg"})
    assert alg == build_algorithm({"name": "fedavg", "weighting": "n_k"})
    new = alg.aggregate(1, _updates(), {"w": torch.zeros(2)}, {}).params
    assert new["w"].tolist() == pytest.approx([(1 + 12 + 672) / 100, (0 + 6 + 96) / 100])


def test_unknown_weighting_names_the_allowed_values() -> None:
    with pytest.raises(AlgorithmConfigError, match=r"algorithm.weighting.*'n_k' or 'uniform'"):
        build_algorithm({"name": "fedavg", "weighting": "equal"})
