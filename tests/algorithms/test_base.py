from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from fedseg.algorithms import build_algorithm
from fedseg.algorithms.base import module_keys, norm_layer_keys, weighted_average
from fedseg.types import ClientUpdate


def _params(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(seed, dtype=torch.long),
    }


def test_weights_one_and_two_give_a_plus_2b_over_3() -> None:
    a, b = {"x": torch.tensor([3.0])}, {"x": torch.tensor([6.0])}
    out = weighted_average([a, b], [1.0, 2.0])
    assert out["x"].item() == pytest.approx((3 + 2 * 6) / 3)


def test_fedavg_of_identical_clients_returns_the_same_weights() -> None:
    alg = build_algorithm({"name": "fedavg"})
    p = _params(0)
    updates = [ClientUpdate(client_id=f"c{i}", params={k: v.clone() for k, v in p.items()}, num_examples=n)
               for i, n in enumerate([5, 7, 11])]
    new = alg.aggregate(1, updates, _params(1), {}).params
    for key, value in p.items():
        torch.testing.assert_close(new[key], value, rtol=0, atol=0)


def test_client_order_does_not_change_fedavg() -> None:
    alg = build_algorithm({"name": "fedavg"})
    updates = [ClientUpdate(client_id=f"c{i}", params=_params(i), num_examples=n) for i, n in enumerate([3, 8, 13])]
    results = []
    for perm in itertools.permutations(updates):
        new = alg.aggregate(1, list(perm), _params(9), {}).params
        results.append(new)
    for other in results[1:]:
        for key in results[0]:
            assert torch.equal(results[0][key], other[key]), key


def test_fedavg_is_the_sample_weighted_mean() -> None:
    alg = build_algorithm({"name": "fedavg"})
    updates = [ClientUpdate(client_id="a", params={"w": torch.tensor([1.0])}, num_examples=1),
               ClientUpdate(client_id="b", params={"w": torch.tensor([4.0])}, num_examples=3)]
    agg = alg.aggregate(1, updates, {"w": torch.tensor([0.0]), "other": torch.tensor([7.0])}, {})
    assert agg.params["w"].item() == pytest.approx(3.25)
    assert agg.params["other"].item() == 7.0  # keys no client sent keep their global value
    # the weights are returned for the round's log, never left in server state
    assert agg.weights == {"a": {"weight": 0.25, "n": 1.0}, "b": {"weight": 0.75, "n": 3.0}}
    assert agg.server_state == {} and agg.metrics == {}


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm2d(2)
        self.gn = nn.GroupNorm(1, 2)
        self.head = nn.Conv2d(2, 2, 1)


def test_norm_keys_are_selected_by_module_type() -> None:
    keys = norm_layer_keys(_Net())
    assert keys == {"norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
                    "norm.num_batches_tracked", "gn.weight", "gn.bias"}


def test_module_keys_by_exact_name_and_error_for_unknown() -> None:
    assert module_keys(_Net(), ["head"]) == {"head.weight", "head.bias"}
    with pytest.raises(KeyError, match="hed"):
        module_keys(_Net(), ["hed"])


def test_fedbn_local_keys_are_the_norm_layers() -> None:
    alg = build_algorithm({"name": "fedbn"})
    assert alg.local_keys(_Net()) == norm_layer_keys(_Net())


def test_local_only_shares_nothing() -> None:
    alg = build_algorithm({"name": "local"})
    assert alg.local_keys(_Net()) == set(_Net().state_dict())
    assert not alg.has_global_model
