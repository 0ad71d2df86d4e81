from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.runtime.inference import evaluate_run
from fedseg.runtime.loso import data_sites, holdout_config, run_loso
from fedseg.runtime.sim import RunError

SITES = ["site0", "site1", "site2"]


def _cfg(algorithm: str = "fedavg", **extra: object) -> object:
    return config_from_dict(tiny_config(algorithm, rounds=1, sites=3, **extra))


def test_holdout_config_trains_on_every_other_site_and_refuses_unknown_site() -> None:
    cfg = _cfg()
    assert data_sites(cfg) == SITES
    assert holdout_config(cfg, "site1").federation.train_sites == ["site0", "site2"]
    assert holdout_config(cfg, "site1", seed=7).seed == 7
    with pytest.raises(RunError, match="'site9' is not a data site; allowed: site0, site1, site2"):
        holdout_config(cfg, "site9")


def test_folder_sites_are_the_listed_or_discovered_site_folders(tmp_path: Path) -> None:
    for site in ("b", "a"):
        (tmp_path / site / "images").mkdir(parents=True)
    raw = tiny_config(data={"source": "folder", "root": str(tmp_path)})
    assert data_sites(config_from_dict(raw)) == ["a", "b"]
    raw["data"]["sites"] = ["b"]
    assert data_sites(config_from_dict(raw)) == ["b"]


@pytest.mark.slow
def test_loso_runs_each_held_out_site_reads_its_unseen_dice_and_skips_finished_runs(tmp_path: Path) -> None:
    cfg, out = _cfg("fedbn"), tmp_path / "loso"  # fedbn: its unseen model differs from its global one
    lines: list[str] = []
    result = run_loso(cfg, out, notify=lines.append)
    assert [r.held_out for r in result.rows] == SITES
    for row in result.rows:
        run_dir = out / f"holdout_{row.held_out}"
        others = [s for s in SITES if s != row.held_out]
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["federation"]["train_sites"] == others
        trained = {r["site"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"}
        assert trained == set(others) and row.trained_on == others
        summary = json.loads((run_dir / "summary.json").read_text())
        assert row.model == "unseen"
        assert row.dice == [summary["test"]["unseen"][row.held_out]["dice"]]
    with (out / "loso.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["held_out"] for r in table] == [*SITES, "mean"]
    assert [float(r["dice"]) for r in table[:3]] == [r.dice[0] for r in result.rows]  # every digit
    assert float(table[-1]["dice"]) == pytest.approx(sum(r.dice[0] for r in result.rows) / 3, abs=1e-12)
    assert "| **mean** |" in (out / "loso.md").read_text()
    assert result.skipped == [] and all("training on" in line for line in lines)

    mtimes = {s: (out / f"holdout_{s}" / "summary.json").stat().st_mtime_ns for s in SITES}
    again = run_loso(cfg, out)
    assert again.skipped == [out / f"holdout_{s}" for s in SITES]
    assert {s: (out / f"holdout_{s}" / "summary.json").stat().st_mtime_ns for s in SITES} == mtimes
    assert [r.dice for r in again.rows] == [r.dice for r in result.rows]

    # `fedseg eval RUN` scores the held-out site with the same (unseen) model and gets the same Dice
    rows = evaluate_run(out / "holdout_site1")
    held = next(r for r in rows if r["site"] == "site1")
    assert held["model"] == "unseen" and held["dice"] == pytest.approx(again.rows[1].dice[0], abs=1e-6)

    # an interrupted held-out run (checkpoint, no summary) is resumed, not restarted, and ends the same
    (out / "holdout_site1" / "summary.json").unlink()
    lines.clear()
    resumed = run_loso(cfg, out, notify=lines.append)
    assert "resuming" in lines[1] and resumed.skipped == [out / "holdout_site0", out / "holdout_site2"]
    assert [r.dice for r in resumed.rows] == [r.dice for r in result.rows]

    with pytest.raises(RunError, match="holds a finished run of another configuration"):
        run_loso(config_from_dict(tiny_config("fedbn", rounds=2, sites=3)), out)
