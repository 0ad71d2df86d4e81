from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fedseg.algorithms import AlgorithmConfigError, build_algorithm
from fedseg.algorithms.base import Algorithm, Batch
from fedseg.algorithms.fedsegnet import (
    AAMKey,
    FedSegNet,
    aam_weights,
    histogram_entropy,
    label_volume_diversity,
    update_distance,
)
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.report import write_report
from fedseg.runtime.sim import run_inprocess
from fedseg.types import ClientUpdate, Params

FEDAVG_ONLY = {"a": 0.0, "b": 0.0, "c": 0.0, "d": 1.0, "e": 0.0, "normalisation": "linear"}


def _update(cid: str, params: Params, n: int, dice: float = 0.8, hd95: float = 4.0) -> ClientUpdate:
    metrics = {AAMKey.VAL_DICE.value: dice, AAMKey.VAL_HD95.value: hd95, AAMKey.DIVERSITY.value: 0.5}
    return ClientUpdate(client_id=cid, params=params, num_examples=n, metrics=metrics)  # type: ignore[arg-type]


def _scenario(noise: float) -> tuple[Params, list[ClientUpdate]]:
    """Three clients with equal data; ``c`` sends the global model plus noise of scale ``noise``."""
    gen = torch.Generator().manual_seed(0)
    w = {"w": torch.randn(50, generator=gen), "n": torch.tensor(3)}
    updates = [
        _update("a", {"w": w["w"] + 0.1 * torch.randn(50, generator=gen), "n": torch.tensor(4)}, 10),
        _update("b", {"w": w["w"] + 0.1 * torch.randn(50, generator=gen), "n": torch.tensor(4)}, 10),
        _update("c", {"w": w["w"] + noise * torch.randn(50, generator=gen), "n": torch.tensor(4)}, 10),
    ]
    return w, updates


def test_only_data_size_with_linear_normalisation_is_fedavg() -> None:
    """methods.md FedSegNet check 1."""
    gen = torch.Generator().manual_seed(1)
    w = {"w": torch.randn(4, 3, generator=gen)}
    updates = [_update(c, {"w": torch.randn(4, 3, generator=gen)}, n, dice=d)
               for c, n, d in (("s1", 3, 0.1), ("s0", 5, 0.9), ("s2", 12, 0.5))]
    aam = build_algorithm({"name": "fedsegnet", **FEDAVG_ONLY})
    agg = aam.aggregate(1, updates, w, {})
    ref = Algorithm().aggregate(1, updates, w, {}).params
    torch.testing.assert_close(agg.params["w"], ref["w"], rtol=1e-6, atol=1e-7)
    assert agg.server_state == {}  # nothing stashed in server state
    weights = agg.weights
    for cid, n in (("s0", 5), ("s1", 3), ("s2", 12)):
        assert weights[cid]["weight"] == pytest.approx(n / 20, abs=1e-12)
        assert weights[cid]["fedavg_weight"] == pytest.approx(n / 20, abs=1e-12)


@pytest.mark.parametrize("normalisation", ["softmax", "linear"])
def test_every_factor_off_is_fedavg(normalisation: str) -> None:
    alpha, _ = aam_weights(dice=[0.9, 0.1], hd95=[1.0, 9.0], divergence=[1.0, 5.0], n=[30, 10],
                           diversity=[0.1, 0.9], a=0, b=0, c=0, d=0, e=0, normalisation=normalisation)  # type: ignore[arg-type]
    assert alpha == [0.75, 0.25]


def test_only_data_size_run_equals_fedavg_run(tmp_path: Path) -> None:
    avg = run_inprocess(config_from_dict(tiny_config("fedavg", rounds=2)), tmp_path / "avg", write_report=False)
    aam = run_inprocess(config_from_dict(tiny_config({"name": "fedsegnet", **FEDAVG_ONLY}, rounds=2)),
                        tmp_path / "aam", write_report=False)
    for key, value in avg.global_params.items():
        torch.testing.assert_close(aam.global_params[key], value, rtol=1e-5, atol=1e-6)


def test_a_noisy_update_gets_less_weight_than_fedavg_gives_it() -> None:
    w, updates = _scenario(noise=5.0)
    aam = FedSegNet()  # methods.md defaults: a = b = c = d = e = 1/5, softmax, T = 1
    agg = aam.aggregate(1, updates, w, {})
    new, weights = agg.params, agg.weights
    assert weights["c"]["fedavg_weight"] == pytest.approx(1 / 3)
    assert weights["c"]["weight"] < 1 / 3 < min(weights["a"]["weight"], weights["b"]["weight"])
    # the divergence is computed against the global parameters aggregation_weights receives
    assert weights["c"]["divergence_l2"] == pytest.approx(float((updates[2].params["w"] - w["w"]).norm()), rel=1e-6)
    fedavg = Algorithm().aggregate(1, updates, w, {}).params
    clean = (updates[0].params["w"] + updates[1].params["w"]) / 2
    assert (new["w"] - clean).norm() < (fedavg["w"] - clean).norm()
    assert torch.equal(new["n"], torch.tensor(4))  # integer buffers: max, as in FedAvg


def test_a_lower_temperature_sharpens_the_weights() -> None:
    w, updates = _scenario(noise=5.0)
    soft = FedSegNet(temperature=1.0).aggregate(1, updates, w, {}).weights["c"]["weight"]
    sharp = FedSegNet(temperature=0.05).aggregate(1, updates, w, {}).weights["c"]["weight"]
    assert sharp < soft < 1 / 3


@pytest.mark.parametrize(
    ("factor", "better", "worse"),
    [
        ("a", {"dice": 0.9}, {"dice": 0.2}),
        ("b", {"hd95": 1.0}, {"hd95": 20.0}),
        ("c", {"divergence": 1.0}, {"divergence": 3.0}),
        ("d", {"n": 30.0}, {"n": 10.0}),
        ("e", {"diversity": 0.9}, {"diversity": 0.1}),
    ],
)
def test_each_factor_alone_ranks_clients_as_documented(factor: str, better: dict[str, float],
                                                       worse: dict[str, float]) -> None:
    base = {"dice": 0.5, "hd95": 5.0, "divergence": 2.0, "n": 20.0, "diversity": 0.5}
    clients = [{**base, **better}, {**base, **worse}]
    coefficients = {k: (1.0 if k == factor else 0.0) for k in "abcde"}
    alpha, _ = aam_weights(**{k: [c[k] for c in clients] for k in base}, **coefficients)  # type: ignore[arg-type]
    assert alpha[0] > alpha[1]
    assert sum(alpha) == pytest.approx(1.0)


def test_formula_by_hand() -> None:
    alpha, factors = aam_weights(
        dice=[0.8, 0.4], hd95=[2.0, 8.0], divergence=[1.0, 3.0], n=[30, 10], diversity=[0.5, 0.0],
        a=0.2, b=0.2, c=0.2, d=0.2, e=0.2,
    )
    s0 = 0.2 * 0.8 + 0.2 * (1 - 2 / 8) - 0.2 * 0.25 + 0.2 * 0.75 + 0.2 * 0.5
    s1 = 0.2 * 0.4 + 0.2 * 0.0 - 0.2 * 0.75 + 0.2 * 0.25 + 0.0
    assert factors[0]["score"] == pytest.approx(s0) and factors[1]["score"] == pytest.approx(s1)
    assert alpha[0] == pytest.approx(math.exp(s0) / (math.exp(s0) + math.exp(s1)))
    linear, _ = aam_weights(
        dice=[0.8, 0.4], hd95=[2.0, 8.0], divergence=[1.0, 3.0], n=[30, 10], diversity=[0.5, 0.0],
        a=0.2, b=0.2, c=0.2, d=0.2, e=0.2, normalisation="linear", hd_max=10.0,
    )
    l0 = s0 - 0.2 * (1 - 2 / 8) + 0.2 * (1 - 2 / 10)
    l1 = max(0.0, s1 + 0.2 * (1 - 8 / 10))
    assert linear[0] == pytest.approx(l0 / (l0 + l1))


def test_missing_validation_metrics_take_the_mean_of_the_others() -> None:
    _, factors = aam_weights(dice=[0.2, None, 0.6], hd95=[None, None, None], divergence=[0, 0, 0],
                             n=[1, 1, 1], diversity=[None, None, None], a=1, b=1, c=1, d=0, e=1)
    assert factors[1]["dice"] == pytest.approx(0.4)
    assert [f["hd95_term"] for f in factors] == [1.0, 1.0, 1.0]  # nobody reported: same for all
    assert [f["divergence"] for f in factors] == [0.0, 0.0, 0.0]


def test_update_distance_is_the_l2_norm_over_floating_keys() -> None:
    ref = {"w": torch.zeros(2, 2), "n": torch.tensor(1), "b": torch.zeros(3)}
    assert update_distance({"w": torch.full((2, 2), 1.5), "n": torch.tensor(9)}, ref) == pytest.approx(3.0)


def test_diversity_proxies() -> None:
    assert histogram_entropy(torch.linspace(0, 1, 1000), 10, 0.0, 1.0) == pytest.approx(1.0, abs=1e-3)
    assert histogram_entropy(torch.full((20,), 0.3), 10, 0.0, 1.0) == 0.0
    masks = torch.zeros(4, 1, 4, 4, dtype=torch.long)
    masks[1, 0, 0, :] = 1  # foreground fractions 0, 1/4, 1/2, 1 -> 4 different bins of 4
    masks[2, 0, :2, :] = 1
    masks[3] = 1
    batches = [Batch(image=torch.zeros(2, 1, 4, 4), mask=masks[i : i + 2]) for i in (0, 2)]
    assert label_volume_diversity(batches, 4) == pytest.approx(1.0)


def test_hyperparameters_are_validated_with_the_key_named() -> None:
    with pytest.raises(AlgorithmConfigError, match="algorithm.c must be a finite number >= 0"):
        build_algorithm({"name": "fedsegnet", "c": -1})
    with pytest.raises(AlgorithmConfigError, match="algorithm.normalisation"):
        build_algorithm({"name": "fedsegnet", "normalisation": "l1"})
    with pytest.raises(AlgorithmConfigError, match="temperature"):
        build_algorithm({"name": "fedsegnet", "temperature": 0})


def test_weights_are_logged_per_round_and_plotted(tmp_path: Path) -> None:
    cfg = tiny_config("fedsegnet", rounds=2, sites=3,
                      model={"name": "transunet", "channels": [4, 8], "heads": 2, "pos_grid": 4})
    run_inprocess(config_from_dict(cfg), tmp_path / "aam", write_report=False)
    records = read_metrics(tmp_path / "aam" / "metrics.jsonl")
    weights = [r for r in records if r["kind"] == "weights"]
    assert [(r["round"], r["site"]) for r in weights] == [(t, s) for t in (1, 2) for s in ("site0", "site1", "site2")]
    for t in (1, 2):
        assert sum(r["weight"] for r in weights if r["round"] == t) == pytest.approx(1.0)
    assert all({"dice", "hd95_term", "divergence", "size", "diversity", "score"} <= set(r) for r in weights)
    write_report(tmp_path / "aam")
    assert (tmp_path / "aam" / "plots" / "weights.png").is_file()
    assert "weights.png" in (tmp_path / "aam" / "report.md").read_text()
