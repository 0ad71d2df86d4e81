"""The report on runs the engine actually writes (tiny synthetic FedAvg and FedBN): whatever the
engine version, FedBN's comparison cell is its personalised per-site test scores."""

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
    for name in ("fedavg", "fedbn"):
        cfg = config_from_dict({**tiny_config(name, rounds=2), "name": name})
        run_inprocess(cfg, root / name, write_report=False)
        out.append(root / name)
    return out


def test_fedbn_cell_is_its_personal_test_scores(engine_runs: list[Path]) -> None:
    fedbn = RunRecords.load(engine_runs[1])
    personal = fedbn.test_table()[ModelKind.PERSONAL]
    rows = {r["site"]: r for r in comparison_rows(engine_runs) if r["method"] == "fedbn"}
    for site, m in personal.items():
        assert rows[site]["mean"] == pytest.approx(m["dice"])
    assert comparison_table(engine_runs).splitlines()[0].startswith("| site | fedavg (global) | fedbn (personal) |")


def test_reports_render_on_engine_runs(engine_runs: list[Path], tmp_path: Path) -> None:
    for run in engine_runs:
        text = write_report(run).read_text()
        assert "## Test results" in text and "— **judged by**" in text and "| optimizer state |" in text
    assert "fedbn (personal)" in write_comparison(engine_runs, tmp_path / "cmp.md").read_text()
