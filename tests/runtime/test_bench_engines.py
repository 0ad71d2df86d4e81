"""The benchmark runner's engine axis: ``engine: flower-sim`` in a suite runs Flower's simulation
(its memory: the process tree's), and the scaling_flower suite compares the engines on one config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedseg.runtime import bench_child
from fedseg.runtime.bench_suite import find_suite, load_suite, plan_suite

ROOT = Path(__file__).resolve().parents[2]


def test_scaling_flower_suite_runs_one_config_on_both_engines() -> None:
    runs = plan_suite(load_suite(find_suite(str(ROOT / "configs/bench/scaling_flower.yaml"))), Path("out"))
    assert [(r.dataset, r.method, r.config.engine) for r in runs] == [
        ("clients10", "inprocess", "inprocess"), ("clients10", "flower_sim", "flower-sim"),
        ("clients50", "inprocess", "inprocess"), ("clients50", "flower_sim", "flower-sim")]
    for a, b in (runs[0:2], runs[2:4]):
        left, right = a.config.model_dump(), b.config.model_dump()
        assert {k for k in left if left[k] != right[k]} == {"engine", "name"}
    scaling = plan_suite(load_suite(find_suite(str(ROOT / "configs/bench/scaling.yaml"))), Path("out"),
                         datasets=["clients10"])[0].config.model_dump()
    same = runs[0].config.model_dump()
    assert {k for k in same if same[k] != scaling[k]} == {"name", "flower"}  # flower: read by flower-sim only


@pytest.mark.parametrize("engine", ["inprocess", "flower-sim"])
def test_train_one_runs_the_configured_engine_and_records_the_tree_memory(
        engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedseg.runtime.flower import simulation

    called: list[tuple[str, bool]] = []

    def fake(name: str) -> Any:
        def run(cfg: Any, run_dir: Path, **kwargs: Any) -> None:
            called.append((name, kwargs["write_report"]))
        return run

    monkeypatch.setattr(bench_child, "run_inprocess", fake("inprocess"))
    monkeypatch.setattr(simulation, "run_flower_simulation", fake("flower-sim"))
    cfg = plan_suite(load_suite(find_suite(str(ROOT / "configs/bench/scaling_flower.yaml"))), tmp_path,
                     datasets=["clients10"])[0].config.model_copy(update={"engine": engine})
    bench_child.train_one(cfg, tmp_path, resume=False, command=None, own_process=True)
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert called == [(engine, True)] and bench["engine"] == engine
    assert bench["tree_processes"] >= 1 and 0 < bench["peak_tree_pss_mb"] <= bench["peak_tree_rss_mb"]
    # flower-sim: the tree's summed RSS (Ray's processes); in-process: this process's exact ru_maxrss
    expected = bench["peak_tree_rss_mb"] if engine == "flower-sim" else bench_child.peak_rss_mb()
    assert bench["peak_rss_mb"] == pytest.approx(expected, rel=0.05)
    bench_child.train_one(cfg, tmp_path, resume=False, command=None, own_process=False)
    shared = json.loads((tmp_path / "bench.json").read_text())
    assert called[1] == (engine, False) and shared["peak_rss_mb"] is None and shared["peak_tree_rss_mb"] is None  # the suite's process: not its own
