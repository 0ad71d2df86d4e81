from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedseg.algorithms import ALGORITHMS
from fedseg.cli.main import app

runner = CliRunner()


@pytest.mark.slow
def test_bench_quick_has_one_row_per_registered_algorithm_and_a_rerun_does_nothing(tmp_path: Path) -> None:
    out, doc = tmp_path / "quick", tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## History\n\nold rows\n")
    result = runner.invoke(app, ["bench", "quick", "--in-process", "--out", str(out), "--doc", str(doc)])
    assert result.exit_code == 0, result.output
    assert f"[{len(ALGORITHMS.names())}/{len(ALGORITHMS.names())}] synthetic/" in result.output
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ALGORITHMS.names()
    assert all(0.0 <= float(r["dice_mean"]) <= 1.0 for r in rows)
    text = doc.read_text()
    assert text.index("fedseg-bench:quick:begin") < text.index("## History") and text.endswith("old rows\n")
    assert "`fedseg bench quick --out" in text and "![synthetic_sites]" in text
    again = runner.invoke(app, ["bench", "quick", "--in-process", "--out", str(out), "--no-plots"])
    assert again.exit_code == 0, again.output
    assert f"trained 0, skipped {len(ALGORITHMS.names())} finished" in again.output


def test_bench_dry_run_lists_the_plan_and_errors_name_the_suite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "quick", "--dry-run", "--seeds", "0,1", "--only", "fedavg,local",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "4 planned runs" in result.output and "synthetic/local/s1" in result.output
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written
    bad = runner.invoke(app, ["bench", "quik", "--dry-run"])
    assert bad.exit_code == 2 and "did you mean 'quick'" in bad.output
    bad = runner.invoke(app, ["bench", "quick", "--dry-run", "--set", "eval.select=last"])
    assert bad.exit_code == 2 and "eval.select must be best_val" in bad.output
