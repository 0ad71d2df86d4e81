"""The report on runs the engine actually writes (tiny synthetic FedAvg, FedBN, FedPer, FedRep): a
personalised method's comparison cell is its personalised per-site test scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.records import ModelKind
from fedseg.report import RunRecords, comparison_rows, comparison_table, write_comparison, write_report
from fedseg.runtime.sim import run_inprocess


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("engine_runs")
    out = []
    for name in ("fedavg", "fedbn", "fedper", "fedrep"):
        cfg = config_from_dict({**tiny_config(name, rounds=2), "name": name})
        run_inprocess(cfg, root / name, write_report=False)
        out.append(root / name)
    return out


@pytest.mark.parametrize("index,name", [(1, "fedbn"), (2, "fedper"), (3, "fedrep")])
def test_personal_methods_cell_is_their_personal_test_scores(engine_runs: list[Path], index: int, name: str) -> None:
    run = RunRecords.load(engine_runs[index])
    personal = run.test_table()[ModelKind.PERSONAL]
    rows = {r["site"]: r for r in comparison_rows(engine_runs) if r["method"] == name}
    assert personal and set(personal) <= set(rows)
    for site, m in personal.items():
        assert rows[site]["mean"] == pytest.approx(m["dice"])
    header = comparison_table(engine_runs).splitlines()[0]
    assert header.startswith("| site | fedavg (global) | fedbn (personal) | fedper (personal) | fedrep (personal) |")


def test_reports_render_on_engine_runs(engine_runs: list[Path], tmp_path: Path) -> None:
    for run in engine_runs:
        text = write_report(run).read_text()
        assert "## Test results" in text and "— **judged by**" in text and "| optimizer state |" in text
    assert "fedbn (personal)" in write_comparison(engine_runs, tmp_path / "cmp.md").read_text()
