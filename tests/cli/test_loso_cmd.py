from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.cli.main import app
from fedseg.config import load_config
from fedseg.runtime.common import config_text

runner = CliRunner()


@pytest.mark.slow
def test_loso_command_runs_every_seed_and_records_the_equivalent_run(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config("fedavg", rounds=1, sites=3)))
    out = tmp_path / "loso"
    args = ["loso", str(config), "--out", str(out), "--seeds", "0", "--seeds", "1", "--set", "train.lr=0.02"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held out site2 (seed 1): training on site0, site1" in result.output
    run_dir = out / "s1" / "holdout_site0"
    assert json.loads((run_dir / "summary.json").read_text())["test"]["global"]["site0"]["dice"] >= 0.0
    command = shlex.split((run_dir / "command.txt").read_text())
    assert command == ["fedseg", "run", str(config), "--set", "train.lr=0.02", "--set",
                       "federation.train_sites=[site1,site2]", "--set", "seed=1", "--out", str(run_dir)]
    same = load_config(config, command[4:-2:2])  # the recorded command runs this very configuration
    assert config_text(same) == (run_dir / "config.yaml").read_text()
    with (out / "loso.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["held_out"], r["seeds"]) for r in rows[:3]] == [("site0", "2"), ("site1", "2"), ("site2", "2")]
    dice = [json.loads((out / f"s{s}" / "holdout_site0" / "summary.json").read_text())["test"]["unseen"]["site0"]
            ["dice"] for s in (0, 1)]
    assert float(rows[0]["dice"]) == pytest.approx(sum(dice) / 2, abs=1e-12)
    assert "finished, skipped" in runner.invoke(app, args).output


def test_loso_command_names_a_bad_config(tmp_path: Path) -> None:
    result = runner.invoke(app, ["loso", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "config file not found" in result.output
