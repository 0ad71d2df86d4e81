"""Acceptance: FedAvg, synthetic 2D, 3 clients, 3 rounds, same seed: ``fedseg run --engine
flower-sim`` (Flower's simulation runtime, Ray) ends where the in-process engine ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.cli.main import app
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
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

    def dice(run: Path) -> dict[tuple[str, str], float]:
        return {(r["site"], r["model"]): r["dice"] for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "test"}

    expected, got = dice(tmp_path / "inproc"), dice(sim)
    assert expected.keys() == got.keys() and len(expected) == 6
    assert all(abs(expected[k] - got[k]) <= 0.01 for k in expected)

    def wire(run: Path) -> list[tuple[object, ...]]:
        return [(r["round"], r["site"], r["bytes_up"], r["bytes_down"]) for r in read_metrics(run / "metrics.jsonl")
                if r["kind"] in ("train", "round")]

    assert wire(tmp_path / "inproc") == wire(sim)  # bytes on the wire, counted the same way
