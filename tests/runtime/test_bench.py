from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedseg.engine.progress import ProgressSink
from fedseg.runtime.bench import run_state, run_suite
from fedseg.runtime.bench_suite import SuiteError, load_suite, plan_suite
from fedseg.runtime.sim import run_inprocess

TINY = {"data.source": "synthetic",
        "data.synthetic": {"num_sites": 2, "spatial_dims": 2, "size": 16, "samples_per_site": [8, 6]},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0}, "train": {"batch_size": 4, "lr": 0.01},
        "federation.rounds": 2}


class _Killed(BaseException):
    """Stands for a SIGKILL between rounds."""


class _KillAtRound2(ProgressSink):
    def round_start(self, rnd: int, clients: list[str]) -> None:
        if rnd == 2:
            raise _Killed


def _plan(tmp_path: Path, **keys: Any) -> tuple[Any, list[Any]]:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "set": TINY, "datasets": [{"name": "syn"}],
                                    "methods": [{"name": "fedavg"}, {"name": "fedbn"}], **keys}))
    suite = load_suite(path)
    return suite, plan_suite(suite, tmp_path / "out")


@pytest.mark.slow
def test_suite_runs_skips_finished_runs_resumes_killed_ones_and_refuses_another_config(tmp_path: Path) -> None:
    suite, runs = _plan(tmp_path)
    killed = runs[0]
    with pytest.raises(_Killed):  # round 1 checkpointed, then killed
        run_inprocess(killed.config, killed.run_dir, progress=_KillAtRound2(), write_report=False)
    assert [run_state(r) for r in runs] == ["resume", "new"]
    with pytest.raises(SuiteError, match="holds a checkpointed run of another configuration"):
        run_state(_plan(tmp_path, set={**TINY, "federation.rounds": 1})[1][0])
    lines: list[str] = []
    result = run_suite(suite, runs, tmp_path / "out", command="fedseg bench s", notify=lines.append, isolate=False,
                       plots=False)
    assert lines == [f"[1/2] syn/fedavg/s0: resuming -> {killed.run_dir}",
                     f"[2/2] syn/fedbn/s0: training -> {runs[1].run_dir}"]
    assert [(r["method"], r["model"]) for r in result.runs] == [("fedavg", "global"), ("fedbn", "personal")]
    fresh = run_inprocess(killed.config, tmp_path / "fresh", write_report=False).summary
    resumed = json.loads((killed.run_dir / "summary.json").read_text())
    assert resumed["test"] == fresh["test"]  # the resumed run ends as an uninterrupted one
    stamps = {p: p.stat().st_mtime_ns for r in runs for p in r.run_dir.rglob("*") if p.is_file()}
    again = run_suite(suite, runs, tmp_path / "out", command="fedseg bench s", isolate=False, plots=False)
    assert again.trained == [] and len(again.skipped) == 2
    assert stamps == {p: p.stat().st_mtime_ns for r in runs for p in r.run_dir.rglob("*") if p.is_file()}
    assert (tmp_path / "out" / "runs.csv").read_text().count("\n") == 3
    _, other = _plan(tmp_path, set={**TINY, "federation.rounds": 1})
    with pytest.raises(SuiteError, match="holds a finished run of another configuration"):
        run_suite(suite, other, tmp_path / "out", command="x", isolate=False)


@pytest.mark.slow
def test_a_child_process_run_records_its_own_peak_rss(tmp_path: Path) -> None:
    suite, runs = _plan(tmp_path, methods=[{"name": "fedavg"}])
    result = run_suite(suite, runs, tmp_path / "out", command="fedseg bench s", plots=True)
    bench = json.loads((runs[0].run_dir / "bench.json").read_text())
    assert bench["peak_rss_mb"] > 50 and result.runs[0]["peak_rss_mb"] == bench["peak_rss_mb"]
    assert (runs[0].run_dir / "report.md").is_file()  # an ordinary fedseg run directory
    assert {p.name for p in (tmp_path / "out" / "plots").iterdir()} == {"syn_sites.png", "syn_bytes.png",
                                                                       "syn_time.png"}


@pytest.mark.slow
def test_loso_rows_for_global_methods_only(tmp_path: Path) -> None:
    suite, runs = _plan(tmp_path, loso=True, set={**TINY, "federation.rounds": 1})
    lines: list[str] = []
    result = run_suite(suite, runs, tmp_path / "out", command="x", notify=lines.append, isolate=False, plots=False)
    fedavg, fedbn = result.runs
    loso_dir = tmp_path / "out" / "syn" / "fedavg" / "loso"
    held = [json.loads((loso_dir / f"s0/holdout_{s}" / "summary.json").read_text())["test"]["global"][s]["dice"]
            for s in ("site0", "site1")]
    assert fedavg["loso_dice"] == pytest.approx(sum(held) / 2) and fedbn["loso_dice"] is None
    assert any("fedbn is judged by personalised models" in line for line in lines)
    assert "LOSO Dice" in (tmp_path / "out" / "results.md").read_text()
