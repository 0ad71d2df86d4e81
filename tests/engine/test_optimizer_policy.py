"""`train.optimizer_state: auto`: ordinary training (Adam kept across rounds) for the local-only
and centralised references, a fresh optimizer every round for federated methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.engine.state_store import ClientStateStore
from fedseg.records import InfoKey
from fedseg.runtime.sim import run_inprocess


def _states(run: Path) -> dict[str, dict]:
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    store = ClientStateStore(run / "client_states", 0)
    store.restore(ckpt["client_states"])
    names = {*ckpt["client_states"].get("memory", {}), *ckpt["client_states"].get("disk", {})}
    return {name: store.load(name) for name in sorted(names)}


def _adam_steps(state: dict) -> set[float]:
    return {float(s["step"]) for s in state["optimizer"]["state"].values()}


@pytest.mark.parametrize("algorithm,client", [("local", "site0"), ("centralized", "pooled")])
def test_references_keep_adam_across_rounds_by_default(tmp_path: Path, algorithm: str, client: str) -> None:
    rounds = 3
    run_inprocess(config_from_dict(tiny_config(algorithm, rounds=rounds)), tmp_path / "r", write_report=False)
    state = _states(tmp_path / "r")[client]
    (n_train,) = {r["n"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")
                  if r["kind"] == "train" and r["site"] == client}
    # Adam's step count covers every round (batch 4, 1 local epoch): it was never restarted
    assert _adam_steps(state) == {float(rounds * -(-n_train // 4))}
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert info[InfoKey.OPTIMIZER_STATE] == "persist"


def test_federated_methods_reset_by_default_and_the_user_can_override(tmp_path: Path) -> None:
    run_inprocess(config_from_dict(tiny_config("fedavg", rounds=2)), tmp_path / "a", write_report=False)
    assert all("optimizer" not in s for s in _states(tmp_path / "a").values())
    assert json.loads((tmp_path / "a" / "run_info.json").read_text())[InfoKey.OPTIMIZER_STATE] == "reset"
    cfg = tiny_config("local", rounds=2, train={"optimizer_state": "reset"})
    run_inprocess(config_from_dict(cfg), tmp_path / "b", write_report=False)
    assert all("optimizer" not in s for s in _states(tmp_path / "b").values())
    assert json.loads((tmp_path / "b" / "run_info.json").read_text())[InfoKey.OPTIMIZER_STATE] == "reset"
