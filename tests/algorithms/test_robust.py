"""Robust aggregation rules and clipping: exact invariants, and Flower's strategies as the oracle."""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from conftest import task_identity
from fedseg.algorithms import build_algorithm
from fedseg.algorithms.params import weighted_average
from fedseg.algorithms.robust import Combiner, clip_updates, krum_scores
from fedseg.config import ConfigError, config_from_dict
from fedseg.runtime.build import build_combiner
from fedseg.types import ClientUpdate, Params

from conftest import tiny_config

SHAPES = {"conv.weight": (3, 2, 3, 3), "conv.bias": (3,), "head.weight": (2, 3)}


def random_updates(n: int, seed: int) -> tuple[list[Params], list[float]]:
    """``n`` random float32 updates of three tensors, and integer sample counts as weights."""
    rng = np.random.default_rng(seed)
    updates = [{k: torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for k, s in SHAPES.items()}
               for _ in range(n)]
    return updates, [float(w) for w in rng.integers(1, 50, size=n)]


def flower_aggregate(strategy: Any, updates: list[Params], weights: list[float]) -> dict[str, np.ndarray]:
    """The strategy's ``aggregate_train`` on reply Messages carrying the same arrays and weights
    (Flower's ``to_numpy_ndarrays(keep_input=False)`` runs ``gc.collect()`` per reply: seconds in a
    test process holding torch; skipped here, it frees memory only)."""
    with task_identity(), mock.patch("gc.collect", return_value=0):
        replies = [
            Message(RecordDict({"arrays": ArrayRecord({k: Array(v.numpy().copy()) for k, v in u.items()}),
                                "metrics": MetricRecord({"num-examples": int(w)})}),
                    dst_node_id=1, message_type="train")
            for u, w in zip(updates, weights, strict=True)
        ]
        arrays, _ = strategy.aggregate_train(1, replies)
    return {} if arrays is None else {k: v.numpy() for k, v in arrays.items()}


def assert_matches(ours: Params, theirs: dict[str, np.ndarray]) -> None:
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        assert value.dtype == torch.float32
        np.testing.assert_allclose(value.numpy(), theirs[key], rtol=1e-5, atol=1e-6, err_msg=key)


# ---------------------------------------------------------------------- Flower as the oracle
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [5, 6])
def test_median_matches_flower_fedmedian(seed: int, n: int) -> None:
    updates, weights = random_updates(n, seed)
    ours = Combiner("median")(updates, weights, updates[0])
    assert_matches(ours, flower_aggregate(FedMedian(), updates, weights))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("n", "beta"), [(5, 0.2), (7, 0.3), (10, 0.25)])
def test_trimmed_mean_matches_flower_fedtrimmedavg(seed: int, n: int, beta: float) -> None:
    updates, weights = random_updates(n, seed)
    ours = Combiner("trimmed_mean", trim_fraction=beta)(updates, weights, updates[0])
    assert_matches(ours, flower_aggregate(FedTrimmedAvg(beta=beta), updates, weights))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "f"), [(5, 1), (7, 2), (6, 0)])
def test_krum_matches_flower_krum(seed: int, n: int, f: int) -> None:
    updates, weights = random_updates(n, seed)
    updates[seed % n] = {k: v * 30 for k, v in updates[seed % n].items()}  # one outlier, never chosen
    ours = Combiner("krum", num_malicious=f)(updates, weights, updates[0])
    assert_matches(ours, flower_aggregate(Krum(num_malicious_nodes=f), updates, weights))
    assert not any(torch.equal(ours["conv.bias"], u["conv.bias"]) for u in [updates[seed % n]])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("n", "f", "m"), [(6, 1, 3), (7, 2, 4), (5, 1, 1)])
def test_multi_krum_matches_flower_multikrum(seed: int, n: int, f: int, m: int) -> None:
    """Flower's MultiKrum averages the selected updates weighted by num-examples, as ours does."""
    updates, weights = random_updates(n, seed)
    ours = Combiner("multi_krum", num_malicious=f, num_selected=m)(updates, weights, updates[0])
    theirs = flower_aggregate(MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m), updates, weights)
    assert_matches(ours, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "f"), [(7, 1), (8, 1), (11, 2)])
def test_bulyan_matches_flower_bulyan(seed: int, n: int, f: int) -> None:
    """Flower's Bulyan: Multi-Krum selects theta = n - 2f (one scoring pass), then per coordinate
    the mean of the theta - 2f values closest to the median; weights are not used."""
    updates, weights = random_updates(n, seed)
    ours = Combiner("bulyan", num_malicious=f)(updates, weights, updates[0])
    assert_matches(ours, flower_aggregate(Bulyan(num_malicious_nodes=f), updates, weights))


def test_bulyan_with_too_few_updates_keeps_the_reference_as_flower_skips() -> None:
    updates, weights = random_updates(6, 0)
    reference = {k: torch.full(s, 7.0) for k, s in SHAPES.items()}
    out = Combiner("bulyan", num_malicious=1)(updates, weights, reference)
    assert all(torch.equal(out[k], reference[k]) for k in SHAPES)
    assert flower_aggregate(Bulyan(num_malicious_nodes=1), updates, weights) == {}  # Flower skips the round


def test_krum_scores_by_hand() -> None:
    """Points 0, 1, 3, 10 on a line, f = 0: each sums its n - 2 = 2 nearest squared distances."""
    updates = [{"x": torch.tensor([v])} for v in (0.0, 1.0, 3.0, 10.0)]
    assert krum_scores(updates, 0) == [1 + 9, 1 + 4, 4 + 9, 49 + 81]


# ---------------------------------------------------------------------- exact invariants
def test_mean_is_bit_identical_to_weighted_average() -> None:
    updates, weights = random_updates(4, 3)
    updates = [{**u, "bn.num_batches_tracked": torch.tensor(i, dtype=torch.int64)} for i, u in enumerate(updates)]
    ours, plain = Combiner()(updates, weights, updates[0]), weighted_average(updates, weights)
    assert ours.keys() == plain.keys() and all(torch.equal(ours[k], plain[k]) for k in plain)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum", "multi_krum", "bulyan"])
def test_identical_updates_return_the_input_and_integers_take_the_maximum(rule: str) -> None:
    base, _ = random_updates(1, 4)
    updates = [{**base[0], "n": torch.tensor(i, dtype=torch.int64)} for i in range(7)]
    out = Combiner(rule, num_malicious=1)(updates, [1.0] * 7, base[0])
    assert all(torch.equal(out[k], base[0][k]) for k in SHAPES)
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 6


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "bulyan", "krum"])
def test_result_does_not_depend_on_the_order_of_updates(rule: str) -> None:
    updates, weights = random_updates(7, 5)
    combine = Combiner(rule, num_malicious=1)
    forward = combine(updates, weights, updates[0])
    backward = combine(updates[::-1], weights[::-1], updates[0])
    assert all(torch.allclose(forward[k], backward[k], rtol=0, atol=1e-7) for k in SHAPES)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum", "multi_krum", "bulyan"])
def test_one_scaled_update_barely_moves_a_robust_rule_but_ruins_the_mean(rule: str) -> None:
    updates, weights = random_updates(7, 6)
    honest = weighted_average(updates[1:], weights[1:])
    updates[0] = {k: v * 100 for k, v in updates[0].items()}
    robust = Combiner(rule, num_malicious=1, trim_fraction=0.2)(updates, weights, honest)
    mean = Combiner()(updates, weights, honest)
    dist = {name: sum(float((p[k] - honest[k]).norm()) for k in SHAPES) for name, p in (("robust", robust),
                                                                                         ("mean", mean))}
    assert dist["robust"] < 10 < dist["mean"]


def test_median_of_a_key_missing_from_some_updates_uses_the_updates_that_carry_it() -> None:
    updates = [{"a": torch.tensor([1.0]), "b": torch.tensor([5.0])}, {"a": torch.tensor([2.0])},
               {"a": torch.tensor([9.0]), "b": torch.tensor([7.0])}]
    out = Combiner("median")(updates, [1.0, 1.0, 1.0], updates[0])
    assert out["a"].item() == 2.0 and out["b"].item() == 6.0


def test_clipping_bounds_the_delta_norm_over_all_tensors_and_keeps_small_updates() -> None:
    reference = {"a": torch.zeros(3, dtype=torch.float64), "b": torch.ones(1, dtype=torch.float64)}
    big = {"a": torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64), "b": torch.tensor([5.0], dtype=torch.float64),
           "n": torch.tensor(3)}
    small = {"a": torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64), "b": torch.tensor([1.0], dtype=torch.float64)}
    clipped, kept = clip_updates([big, small], reference, 1.0)
    assert kept is small
    torch.testing.assert_close(clipped["a"], torch.tensor([0.6, 0.0, 0.0], dtype=torch.float64))  # delta (3, 4)/5
    torch.testing.assert_close(clipped["b"], torch.tensor([1.8], dtype=torch.float64))
    assert clipped["n"] is big["n"]
    with pytest.raises(ValueError, match="'c'"):
        clip_updates([{"c": torch.zeros(2)}], reference, 1.0)


def test_mean_with_clip_norm_averages_the_clipped_updates() -> None:
    reference = {"w": torch.zeros(2)}
    updates = [{"w": torch.tensor([10.0, 0.0])}, {"w": torch.tensor([0.0, 0.5])}]
    out = Combiner(clip_norm=1.0)(updates, [1.0, 3.0], reference)
    torch.testing.assert_close(out["w"], torch.tensor([0.25, 0.375]))


def test_check_refuses_too_few_clients_per_round() -> None:
    with pytest.raises(ValueError, match="at least 5 clients"):
        Combiner("krum", num_malicious=1).check(4)
    with pytest.raises(ValueError, match="at least 7 clients"):
        Combiner("bulyan", num_malicious=1).check(6)
    with pytest.raises(ValueError, match="trims nothing"):
        Combiner("trimmed_mean", trim_fraction=0.1).check(5)
    with pytest.raises(ValueError, match="num_selected 4 exceeds"):
        Combiner("multi_krum", num_selected=4).check(3)
    Combiner("bulyan", num_malicious=1).check(7)
    Combiner("median").check(1)


# ---------------------------------------------------------------------- algorithms and config
def test_every_algorithm_aggregates_through_its_combine_step() -> None:
    updates, weights = random_updates(5, 7)
    start = {k: torch.zeros(s) for k, s in SHAPES.items()}
    msgs = [ClientUpdate(f"site{i}", u, int(w)) for i, (u, w) in enumerate(zip(updates, weights, strict=True))]
    for name in ("fedavg", "fedprox", "ditto"):
        alg = build_algorithm({"name": name})
        plain = alg.aggregate(1, msgs, start, {}).params
        assert all(torch.equal(plain[k], weighted_average(updates, weights)[k]) for k in SHAPES)
        alg.combine = Combiner("median")
        robust = alg.aggregate(1, msgs, start, {}).params
        assert all(torch.equal(robust[k], Combiner("median")(updates, weights, start)[k]) for k in SHAPES)


def test_fedmix_combines_both_nets_with_the_rule() -> None:
    alg = build_algorithm({"name": "fedmix"})
    alg.combine = Combiner("median")
    updates, weights = random_updates(3, 8)
    start = {k: torch.zeros(s) for k, s in SHAPES.items()}
    state = {"fedmix_net2": dict(start)}
    msgs = [ClientUpdate(f"site{i}", u, int(w), extras={f"net2.{k}": -v for k, v in u.items()},
                         metrics={"fedmix_loss": 1.0}) for i, (u, w) in enumerate(zip(updates, weights, strict=True))]
    agg = alg.aggregate(1, msgs, start, state)
    median = Combiner("median")(updates, weights, start)
    for k in SHAPES:
        torch.testing.assert_close(agg.params[k], median[k])
        torch.testing.assert_close(agg.server_state["fedmix_net2"][k], -median[k])


def test_build_combiner_refuses_what_cannot_be_combined() -> None:
    cfg = config_from_dict(tiny_config("centralized", aggregation={"rule": "median"}))
    with pytest.raises(ConfigError, match="nothing to combine"):
        build_combiner(cfg, build_algorithm(cfg.algorithm), ["pooled"])
    cfg = config_from_dict(tiny_config(sites=4, aggregation={"rule": "krum", "num_malicious": 1}))
    with pytest.raises(ConfigError, match="at least 5 clients per round, got 4"):
        build_combiner(cfg, build_algorithm(cfg.algorithm), [f"site{i}" for i in range(4)])
    cfg = config_from_dict(tiny_config(sites=4, aggregation={"rule": "krum", "num_malicious": 1}))
    assert build_combiner(cfg, build_algorithm(cfg.algorithm), None).rule == "krum"  # a ClientApp: unchecked


def test_num_selected_needs_multi_krum() -> None:
    with pytest.raises(Exception, match="num_selected applies to rule multi_krum only"):
        config_from_dict(tiny_config(aggregation={"rule": "krum", "num_selected": 2}))
