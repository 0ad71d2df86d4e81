"""Acceptance: FedAvg, synthetic 2D, 3 clients, 3 rounds, same seed: ``fedseg run --engine
flower-sim`` (Flower's simulation runtime, Ray) ends where the in-process engine ends, counts the
same bytes on the wire, writes the same splits.json, and keeps client states for ``eval --client``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from flower_testlib import DirectGrid, task_identity
from fedseg.cli.main import app
from fedseg.config import config_from_dict
from fedseg.engine.rundir import RunDir, read_metrics
from fedseg.runtime.common import config_text
from fedseg.runtime.flower.client_app import clear_cache, make_client_app
from fedseg.runtime.flower.keys import RunKey
from fedseg.runtime.flower.server_app import run_server
from fedseg.runtime.sim import run_inprocess

pytestmark = pytest.mark.slow


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Each simulated ClientApp gets flower.sim_cpus_per_client (1) torch thread; the reference too,
    since CPU kernels sum in a thread-dependent order (docs/deployment.md, Simulation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_flower_sim_matches_inprocess(tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr_home"))
    cfg = tiny_config("fedavg", rounds=3, sites=3)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reference = run_inprocess(config_from_dict(cfg), tmp_path / "inproc", write_report=False)

    result = CliRunner().invoke(app, ["run", str(path), "--engine", "flower-sim", "--out", str(tmp_path / "sim")])
    assert result.exit_code == 0, result.output

    sim = tmp_path / "sim"
    for name in ("config.yaml", "command.txt", "metrics.jsonl", "checkpoints/last.pt", "summary.json", "report.md"):
        assert (sim / name).is_file(), name
    assert json.loads((sim / "run_info.json").read_text())["engine"] == "flower-sim"
    assert "--engine flower-sim" in (sim / "command.txt").read_text()

    weights = torch.load(sim / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["global_params"]
    for key, value in reference.global_params.items():
        torch.testing.assert_close(weights[key].double(), value.double(), rtol=0, atol=1e-5, msg=key)

    def dice(run: Path) -> dict[tuple[str, str, str, int], float]:
        return {(r["site"], r["model"], r["selection"], r["selected_round"]): r["dice"]
                for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "eval" and r.get("split") == "test"}

    expected, got = dice(tmp_path / "inproc"), dice(sim)
    # same models, same selected rounds, on both engines: best-validation and last-round checkpoints
    assert expected.keys() == got.keys() and len(expected) == 12
    assert all(abs(expected[k] - got[k]) <= 0.01 for k in expected)

    def wire(run: Path) -> list[tuple[object, ...]]:
        return [(r["round"], r["site"], r["kind"], r.get("phase"), r.get("split"), r["bytes_up"], r["bytes_down"],
                 r["bytes_up_raw"], r["bytes_down_raw"]) for r in read_metrics(run / "metrics.jsonl")
                if r["kind"] in ("train", "round", "comm")]

    assert wire(tmp_path / "inproc") == wire(sim)  # bytes on the wire, counted the same way, evaluation included
    # every client of every round, every round, every validation, the two test evaluations (best_val, last)
    assert len(wire(sim)) == 3 * (3 + 1) + 3 + 2
    summary = json.loads((sim / "summary.json").read_text())
    assert summary["bytes"] == json.loads((tmp_path / "inproc" / "summary.json").read_text())["bytes"]

    # the data check ran before the simulation and wrote the same splits as in-process
    assert json.loads((sim / "splits.json").read_text()) == json.loads((tmp_path / "inproc" / "splits.json").read_text())
    # each simulated ClientApp kept its state in the run directory: eval --client works as in-process
    assert sorted(p.name for p in (sim / "client_states").iterdir()) == [f"site{i}.r3.pt" for i in range(3)]
    evaluated = CliRunner().invoke(app, ["eval", str(sim), "--client", "site1"])
    assert evaluated.exit_code == 0 and "personalised (site1)" in evaluated.output, evaluated.output


def test_flower_sim_resumes_with_the_client_states(tmp_path: Path, one_thread: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 1 of a FedBN flower-sim run (its apps driven in this process, as the simulation drives
    them), then ``fedseg run --engine flower-sim --resume`` in Ray: the ClientApps restore their
    personal norm layers and optimizer state from the run directory, so the run ends where an
    uninterrupted in-process run ends."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr_home"))
    cfg = tiny_config("fedbn", rounds=2, sites=2, train={"optimizer_state": "persist"})
    reference = run_inprocess(config_from_dict(cfg), tmp_path / "inproc", write_report=False)

    sim = tmp_path / "sim"
    first = config_from_dict({**cfg, "federation": {**cfg["federation"], "rounds": 1}, "engine": "flower-sim"})
    run_config = {RunKey.CONFIG.value: config_text(first), RunKey.RUN_DIR.value: str(sim)}
    states = RunDir(sim).client_states
    clear_cache()
    with task_identity():
        grid = DirectGrid(make_client_app({**run_config, RunKey.STATE_DIR.value: str(states)}),
                          [{"partition-id": i} for i in range(2)])
        run_server(grid, run_config, engine="flower-sim", expected_nodes=2, write_report=False, state_dir=states)
    clear_cache()
    (sim / "config.yaml").unlink()  # the 1-round config differs only in rounds

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["run", str(path), "--engine", "flower-sim", "--out", str(sim), "--resume"])
    assert result.exit_code == 0, result.output
    weights = torch.load(sim / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["global_params"]
    for key, value in reference.global_params.items():
        torch.testing.assert_close(weights[key].double(), value.double(), rtol=0, atol=1e-5, msg=key)
    personal = {r["site"]: r["dice"] for r in read_metrics(sim / "metrics.jsonl")
                if r.get("kind") == "eval" and r.get("split") == "test" and r["model"] == "personal"}
    expected = {r["site"]: r["dice"] for r in read_metrics(tmp_path / "inproc" / "metrics.jsonl")
                if r.get("kind") == "eval" and r.get("split") == "test" and r["model"] == "personal"}
    assert personal.keys() == expected.keys() == {"site0", "site1"}
    assert all(abs(personal[k] - expected[k]) <= 0.01 for k in expected)
    assert [r["round"] for r in read_metrics(sim / "metrics.jsonl") if r["kind"] == "train"] == [1, 1, 2, 2]
