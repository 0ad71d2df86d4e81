from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import PROTOTYPE_ALGORITHMS, SAM_ALGORITHMS, tiny_config
from fedseg.algorithms import ALGORITHMS, build_algorithm
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.models import build_model
from fedseg.runtime.sim import RunError, run_inprocess, sample_clients
from fedseg.types import ClientUpdate


def _run(tmp_path: Path, name: str, cfg: dict) -> object:
    return run_inprocess(config_from_dict(cfg), tmp_path / name, write_report=False)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_every_algorithm_runs_two_rounds_two_clients(tmp_path: Path, algorithm: str, dims: int) -> None:
    if dims == 3 and algorithm in PROTOTYPE_ALGORITHMS:
        pytest.skip("the prototype methods need fedbcs_unet, which is 2D only")
    if dims == 3 and algorithm in SAM_ALGORITHMS:
        pytest.skip("the SAM methods need model sam, which is 2D only")
    result = _run(tmp_path, algorithm, tiny_config(algorithm, dims=dims, rounds=2, sites=2))
    records = read_metrics(tmp_path / algorithm / "metrics.jsonl")
    test = [r for r in records if r.get("kind") == "eval" and r.get("split") == "test"]
    assert {r["site"] for r in test} == {"site0", "site1"}
    assert all(0.0 <= r["dice"] <= 1.0 for r in test)
    assert max(r["round"] for r in records) == 2
    assert all(torch.isfinite(v).all() for v in result.global_params.values() if v.is_floating_point())


def test_fedprox_with_mu_zero_equals_fedavg_bit_for_bit(tmp_path: Path) -> None:
    avg = _run(tmp_path, "avg", tiny_config("fedavg", rounds=2))
    prox = _run(tmp_path, "prox", tiny_config({"name": "fedprox", "mu": 0.0}, rounds=2))
    assert avg.global_params.keys() == prox.global_params.keys()
    for key, value in avg.global_params.items():
        assert torch.equal(value, prox.global_params[key]), key


def test_fedprox_with_positive_mu_differs_from_fedavg(tmp_path: Path) -> None:
    avg = _run(tmp_path, "avg", tiny_config("fedavg", rounds=1))
    prox = _run(tmp_path, "prox", tiny_config({"name": "fedprox", "mu": 10.0}, rounds=1))
    assert any(not torch.equal(v, prox.global_params[k]) for k, v in avg.global_params.items())


def test_same_seed_same_weights_different_seed_differs(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", tiny_config(rounds=1))
    b = _run(tmp_path, "b", tiny_config(rounds=1))
    c = _run(tmp_path, "c", {**tiny_config(rounds=1), "seed": 1})
    assert all(torch.equal(v, b.global_params[k]) for k, v in a.global_params.items())
    assert any(not torch.equal(v, c.global_params[k]) for k, v in a.global_params.items())


def test_fedbn_norm_parameters_never_appear_in_a_client_message(tmp_path: Path,
                                                                 sent_updates: list[ClientUpdate]) -> None:
    sent = sent_updates
    cfg = tiny_config("fedbn", rounds=2)
    _run(tmp_path, "bn", cfg)
    run_cfg = config_from_dict(cfg)
    model = build_model(run_cfg.model, 2, 1, 2)
    norm_keys = build_algorithm({"name": "fedbn"}).local_keys(model)
    assert norm_keys, "the test model must have normalisation layers"
    assert len(sent) == 4  # 2 rounds x 2 clients
    for update in sent:
        assert not norm_keys & set(update.params), sorted(norm_keys & set(update.params))
        assert set(update.params) == set(model.state_dict()) - norm_keys


def test_fedbn_keeps_personal_norm_layers_per_client(tmp_path: Path) -> None:
    _run(tmp_path, "bn", tiny_config("fedbn", rounds=2))
    records = read_metrics(tmp_path / "bn" / "metrics.jsonl")
    personal = [r for r in records if r.get("kind") == "eval" and r.get("model") == "personal" and r.get("split") == "test"]
    assert {r["site"] for r in personal} == {"site0", "site1"}


def test_metrics_and_bytes_are_logged_per_round_per_client(tmp_path: Path) -> None:
    _run(tmp_path, "m", tiny_config("fedavg", rounds=2))
    records = read_metrics(tmp_path / "m" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [(r["round"], r["site"]) for r in train] == [(1, "site0"), (1, "site1"), (2, "site0"), (2, "site1")]
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in train)
    rounds = [r for r in records if r["kind"] == "round"]
    assert [r["bytes_up"] for r in rounds] == [sum(t["bytes_up"] for t in train if t["round"] == k) for k in (1, 2)]


def test_local_only_sends_no_weights(tmp_path: Path) -> None:
    _run(tmp_path, "local", tiny_config("local", rounds=1))
    train = [r for r in read_metrics(tmp_path / "local" / "metrics.jsonl") if r["kind"] == "train"]
    assert all(r["bytes_up"] < 1000 and r["bytes_down"] < 1000 for r in train)


def test_sampling_fraction_is_seeded() -> None:
    clients = [f"c{i}" for i in range(10)]
    a = sample_clients(clients, 0.3, 1, seed=0, rnd=1)
    assert len(a) == 3 and a == sample_clients(clients, 0.3, 1, seed=0, rnd=1)
    assert sample_clients(clients, 0.01, 2, seed=0, rnd=1).__len__() == 2


def test_fresh_run_refuses_existing_checkpoint_and_resume_needs_one(tmp_path: Path) -> None:
    _run(tmp_path, "r", tiny_config(rounds=1))
    with pytest.raises(RunError, match="--resume"):
        _run(tmp_path, "r", tiny_config(rounds=1))
    with pytest.raises(RunError, match="no checkpoint"):
        run_inprocess(config_from_dict(tiny_config(rounds=1)), tmp_path / "empty", resume=True)


def test_resume_with_a_different_config_is_refused(tmp_path: Path) -> None:
    _run(tmp_path, "r", tiny_config(rounds=1))
    with pytest.raises(RunError, match="configuration differs"):
        run_inprocess(config_from_dict(tiny_config(rounds=2, seed=3)), tmp_path / "r", resume=True)


def test_in_process_resume_matches_uninterrupted(tmp_path: Path) -> None:
    full = _run(tmp_path, "full", tiny_config("fedbn", rounds=3))
    part_cfg = tiny_config("fedbn", rounds=3)
    run_dir = tmp_path / "part"
    # run 2 rounds, then pretend the process died: the checkpoint says round 2 of 3
    two = config_from_dict({**part_cfg, "federation": {**part_cfg["federation"], "rounds": 2}})
    run_inprocess(two, run_dir, write_report=False)
    (run_dir / "config.yaml").unlink()  # the 2-round config differs only in rounds
    resumed = run_inprocess(config_from_dict(part_cfg), run_dir, resume=True, write_report=False)
    for key, value in full.global_params.items():
        assert torch.equal(value, resumed.global_params[key]), key
    meta = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    assert meta["round"] == 3
