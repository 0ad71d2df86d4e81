"""FedOAP: what stays local, the key/value banks, the reduction to FedAvg, fine-tuning, resume
(methods.md 3(h) checks 3 and 5; the banks-are-features check)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.algorithms.base import StateKey
from fedseg.algorithms.fedoap import FedOAP, OAPKey, bank_extras, read_banks
from fedseg.config import config_from_dict
from fedseg.engine import wire
from fedseg.engine.rundir import read_metrics
from fedseg.models import build_model
from fedseg.models.fedoap_unet import FedOAPUNet
from fedseg.runtime.sim import run_inprocess
from fedseg.runtime.trained import open_run
from fedseg.types import Broadcast, ClientUpdate

M, D = 64, 16
"""Bank tokens and the tiny model's bottleneck width (features [4, 8, 16])."""


def _cfg(algorithm: dict[str, Any] | None = None, rounds: int = 2, **extra: Any) -> dict[str, Any]:
    return tiny_config({"name": "fedoap", "finetune_epochs": 1, **(algorithm or {})}, rounds=rounds, **extra)


def _run(tmp_path: Path, name: str, cfg: dict[str, Any]) -> Any:
    return run_inprocess(config_from_dict(cfg), tmp_path / name, write_report=False)


def _model() -> FedOAPUNet:
    model = build_model(config_from_dict(_cfg()).model, 2, 1, 2)
    assert isinstance(model, FedOAPUNet)
    return model


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(b[key], value), key


@pytest.fixture(scope="module")
def spied_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Any]]]:
    """One 2-round FedOAP run (1 fine-tuning epoch) with every message on the wire recorded."""
    sent: list[Any] = []
    original = wire.encode

    def spy(message: Any) -> bytes:
        sent.append(message)
        return original(message)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wire, "encode", spy)
        run_dir = tmp_path_factory.mktemp("fedoap") / "run"
        _run(run_dir.parent, "run", _cfg())
    yield run_dir, sent


# ---------------------------------------------------------------------------------------------- local parts
def test_local_keys_are_query_adapter_head_and_unet_norms_not_the_dca_norm() -> None:
    model = _model()
    keys = build_algorithm({"name": "fedoap"}).local_keys(model)
    assert {"dca.q_proj.weight", "dca.q_proj.bias", "adapter.depthwise.weight", "adapter.pointwise.weight",
            "head.weight", "head.bias", "bottleneck.bn1.running_mean", "encoders.0.bn2.weight"} <= keys
    assert not {k for k in keys if k.startswith(("dca.k_proj", "dca.v_proj", "dca.out_proj", "dca.norm"))}
    only_q = build_algorithm({"name": "fedoap", "local": ["query"]}).local_keys(model)
    assert only_q == {"dca.q_proj.weight", "dca.q_proj.bias"}
    assert build_algorithm({"name": "fedoap", "local": []}).local_keys(model) == set()


def test_bad_settings_and_models_are_refused() -> None:
    with pytest.raises(ValueError, match="algorithm.local.*allowed: query"):
        build_algorithm({"name": "fedoap", "local": ["queries"]})
    with pytest.raises(ValueError, match="mode"):
        build_algorithm({"name": "fedoap", "mode": "kv_banks"})
    plain = build_model(config_from_dict(tiny_config()).model, 2, 1, 2)
    with pytest.raises(TypeError, match="fedoap_unet"):
        build_algorithm({"name": "fedoap"}).local_keys(plain)


# ---------------------------------------------------------------------------------------------- messages
def test_local_parts_never_travel_and_banks_are_pooled_features(spied_run: tuple[Path, list[Any]]) -> None:
    _, sent = spied_run
    local = build_algorithm({"name": "fedoap"}).local_keys(_model())
    updates = [m for m in sent if isinstance(m, ClientUpdate)]
    assert len(updates) == 4
    for u in updates:
        assert not local & set(u.params)
        assert "dca.k_proj.weight" in u.params and "dca.v_proj.weight" in u.params
        assert set(u.extras) == {f"kvbank.{u.client_id}.key", f"kvbank.{u.client_id}.value"}
        for t in u.extras.values():  # m x d features, not a (B, C, H, W) or (H, W) image of 16x16
            assert t.shape == (M, D) and t.dtype == torch.float32
    broadcasts = [m for m in sent if isinstance(m, Broadcast)]
    assert all(not b.extras for b in broadcasts if b.config.get("round") == 1)  # round 1: own tokens only
    later = [b for b in broadcasts if b.config.get("round") == 2]
    assert later and all(set(read_banks(b.extras)) == {"site0", "site1"} for b in later)


def test_query_adapter_head_are_personal_and_kv_shared(spied_run: tuple[Path, list[Any]]) -> None:
    """Check 3: the global W_Q/adapter/head are the initial ones (never aggregated), each client's
    differ; W_K and W_V of every personalised model are the global ones."""
    run_dir, _ = spied_run
    run = open_run(run_dir, "last")
    g, init = run.checkpoint["global_params"], run.init_params
    states = run.states
    assert states is not None and set(states) == {"site0", "site1"}
    personal = {c: run.algorithm.personal_model({**init, **g}, s) for c, s in states.items()}
    for key in ("dca.q_proj.weight", "adapter.pointwise.weight", "head.weight"):
        assert torch.equal(g[key], init[key]), key  # carried along, never aggregated
        assert not torch.equal(personal["site0"][key], personal["site1"][key]), key  # type: ignore[index]
        assert not torch.equal(personal["site0"][key], init[key]), key  # type: ignore[index]
    for key in ("dca.k_proj.weight", "dca.v_proj.weight", "dca.out_proj.weight", "dca.norm.weight"):
        assert torch.equal(personal["site0"][key], g[key]) and torch.equal(personal["site1"][key], g[key])  # type: ignore[index]
        assert not torch.equal(g[key], init[key]), key
    assert all(s[OAPKey.CLIENT.value] == c for c, s in states.items())


def test_server_keeps_every_clients_last_bank_under_sampling() -> None:
    alg = build_algorithm({"name": "fedoap"})
    old = {**bank_extras("a", torch.zeros(M, D), torch.zeros(M, D)),
           **bank_extras("b", torch.ones(M, D), torch.ones(M, D))}
    new_a = ClientUpdate("a", {"w": torch.ones(1)}, 3, extras=bank_extras("a", torch.full((M, D), 2.0),
                                                                          torch.full((M, D), 2.0)))
    agg = alg.aggregate(2, [new_a], {"w": torch.zeros(1)}, {OAPKey.SERVER_STATE.value: old})
    banks = read_banks(agg.server_state[OAPKey.SERVER_STATE.value])
    assert set(banks) == {"a", "b"}
    assert float(banks["a"][0][0, 0]) == 2.0 and float(banks["b"][0][0, 0]) == 1.0
    assert set(alg.broadcast(3, {}, agg.server_state).extras) == set(agg.server_state[OAPKey.SERVER_STATE.value])


def test_each_client_attends_to_the_other_banks_and_an_unseen_site_to_all() -> None:
    keys = {c: torch.full((M, D), float(i)) for i, c in enumerate(["a", "b", "c"])}
    extras = {k: v for c, t in keys.items() for k, v in bank_extras(c, t, -t).items()}
    alg = build_algorithm({"name": "fedoap"})
    assert isinstance(alg, FedOAP)
    k, v = alg.bank_for(extras, "b")  # type: ignore[misc]
    assert k.shape == (2 * M, D) and k[0, 0] == 0 and k[-1, 0] == 2 and torch.equal(v, -k)
    model = _model()
    alg.prepare_eval_model(model, extras, {OAPKey.CLIENT.value: "a"})
    assert model.dca is not None and model.dca.bank_key is not None and model.dca.bank_key.shape == (2 * M, D)
    alg.prepare_eval_model(model, extras, {})  # a site that never trained: every bank
    assert model.dca.bank_key is not None and model.dca.bank_key.shape == (3 * M, D)
    mean = build_algorithm({"name": "fedoap", "kv_agg": "mean"}).bank_for(extras, "a")  # type: ignore[attr-defined]
    assert mean[0].shape == (M, D) and float(mean[0][0, 0]) == 1.5
    assert build_algorithm({"name": "fedoap", "mode": "kv_param"}).bank_for(extras, "a") is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="kvbank.<client>.key"):
        read_banks({"kvbank.a.keys": torch.zeros(1)})
    with pytest.raises(ValueError, match="lack"):
        read_banks({"kvbank.a.key": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------- reductions
FEDAVG_LIKE = {"local": [], "mode": "kv_param", "train_pbl_weight": 0.0, "finetune_epochs": 0}


def test_check5_without_local_parts_banks_pbl_and_finetuning_it_is_fedavg_bit_for_bit(tmp_path: Path) -> None:
    avg = _cfg(rounds=2)
    avg["algorithm"] = {"name": "fedavg"}
    _assert_same(_run(tmp_path, "avg", avg).global_params, _run(tmp_path, "oap", _cfg(FEDAVG_LIKE)).global_params)


def test_banks_change_nothing_in_round_one_and_the_model_from_round_two(tmp_path: Path) -> None:
    bank = {**FEDAVG_LIKE, "mode": "kv_bank"}
    _assert_same(_run(tmp_path, "p1", _cfg(FEDAVG_LIKE, rounds=1)).global_params,
                 _run(tmp_path, "b1", _cfg(bank, rounds=1)).global_params)
    p2, b2 = _run(tmp_path, "p2", _cfg(FEDAVG_LIKE)), _run(tmp_path, "b2", _cfg(bank))
    assert any(not torch.equal(b2.global_params[k], v) for k, v in p2.global_params.items())


def test_finetuning_trains_only_local_parts_with_the_boundary_loss(tmp_path: Path) -> None:
    off = _run(tmp_path, "off", _cfg({"finetune_epochs": 0}))
    on = _run(tmp_path, "on", _cfg({"finetune_epochs": 2}))
    _assert_same(off.global_params, on.global_params)  # shared parts frozen
    states = {n: open_run(tmp_path / n, "last").states for n in ("off", "on")}
    for site in ("site0", "site1"):
        a, b = (states[n][site][StateKey.LOCAL_PARAMS] for n in ("off", "on"))  # type: ignore[index]
        assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    records = [r for r in read_metrics(tmp_path / "on" / "metrics.jsonl") if r.get("kind") == "personalize"]
    assert {r["site"] for r in records} == {"site0", "site1"}
    assert all(r["finetune_loss"] > r["finetune_task_loss"] for r in records)  # + PBL (weight 1)


@pytest.mark.slow
def test_training_with_pbl_resumes_bit_identically(tmp_path: Path) -> None:
    algo = {"train_pbl_weight": 1.0, "finetune_epochs": 0}
    full = _run(tmp_path, "full", _cfg(algo, rounds=3))
    plain = _run(tmp_path, "plain", _cfg({**algo, "train_pbl_weight": 0.0}, rounds=3))
    assert any(not torch.equal(plain.global_params[k], v) for k, v in full.global_params.items())
    two = _cfg(algo, rounds=2)
    _run(tmp_path, "part", two)
    (tmp_path / "part" / "config.yaml").unlink()  # the 2-round config differs only in rounds
    resumed = run_inprocess(config_from_dict(_cfg(algo, rounds=3)), tmp_path / "part", resume=True,
                            write_report=False)
    _assert_same(full.global_params, resumed.global_params)
