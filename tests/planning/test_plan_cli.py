"""``fedseg plan`` on a tiny NIfTI dataset, ``plans.yaml`` precedence, and ``fedseg run --plans``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedseg.cli.main import app
from fedseg.config import ConfigError
from fedseg.planning import PlanError, load_planned_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_testlib import plan_config, write_dataset  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan_cli_data")
    write_dataset(root)
    return root


def _write(path: Path, doc: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_fedseg_plan_writes_plans_report_and_plot(dataset: Path, tmp_path: Path) -> None:
    cfg = _write(tmp_path / "cfg.yaml", plan_config(dataset))
    out = tmp_path / "p" / "plans.yaml"
    result = runner.invoke(app, ["plan", str(cfg), "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(out.read_text())
    assert doc["fedseg_plans"] == 1 and doc["sites"] == ["siteA", "siteB"]
    assert doc["configuration"] == "3d_fullres"
    keys = [d["key"] for d in doc["decisions"]]
    assert {"data.preprocess.target_spacing", "train.patch_size", "model.pool_strides"} <= set(keys)
    assert all(d["rule"] for d in doc["decisions"])
    assert doc["overrides"]["model"]["name"] == "dynunet"
    report = (tmp_path / "p" / "plans.md").read_text()
    assert "## Decisions" in report and "fingerprint.png" in report
    assert (tmp_path / "p" / "fingerprint.png").stat().st_size > 0


def test_fedseg_plan_refuses_synthetic_data(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "cfg.yaml", {"data": {"source": "synthetic"}})
    result = runner.invoke(app, ["plan", str(cfg), "--out", str(tmp_path / "plans.yaml")])
    assert result.exit_code == 2 and "data.source" in result.output


def test_config_and_set_override_the_plan_key_by_key(tmp_path: Path) -> None:
    plans = _write(tmp_path / "plans.yaml", {"fedseg_plans": 1, "overrides": {
        "train": {"patch_size": [16, 16], "batch_size": 12},
        "data": {"preprocess": {"target_spacing": [1.0, 1.0], "normalize": "zscore"}},
        "model": {"name": "dynunet", "kernels": [[3, 3]] * 3, "pool_strides": [[2, 2]] * 2}}})
    cfg = _write(tmp_path / "cfg.yaml", {"train": {"batch_size": 3}, "data": {"preprocess": {"normalize": "none"}}})
    run = load_planned_config(cfg, plans, ["train.lr=0.5", "data.preprocess.normalize=zscore_nonzero"])
    assert run.train.patch_size == [16, 16]  # plan
    assert run.train.batch_size == 3  # config file over plan
    assert run.data.preprocess.normalize == "zscore_nonzero" and run.train.lr == 0.5  # --set over both
    assert run.data.preprocess.target_spacing == [1.0, 1.0] and run.model.name == "dynunet"
    other = _write(tmp_path / "unet.yaml", {"model": {"channels": [4, 8], "strides": [2]}})
    assert load_planned_config(other, plans, []).model.name == "unet"  # another model: the plan's is dropped


def test_bad_plans_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no such file"):
        load_planned_config(None, tmp_path / "missing.yaml", [])
    with pytest.raises(PlanError, match="not a fedseg plans file"):
        load_planned_config(None, _write(tmp_path / "x.yaml", {"a": 1}), [])
    bad = _write(tmp_path / "bad.yaml", {"fedseg_plans": 1, "overrides": {"train": {"batch_sise": 2}}})
    with pytest.raises(ConfigError, match="batch_sise"):
        load_planned_config(None, bad, [])


@pytest.mark.slow
def test_fedseg_run_with_plans(dataset: Path, tmp_path: Path) -> None:
    raw = plan_config(dataset)
    raw.pop("model")
    raw["data"]["preprocess"] = {}  # the plan decides the grid
    cfg = _write(tmp_path / "cfg.yaml", raw)
    plans = tmp_path / "plans.yaml"
    assert runner.invoke(app, ["plan", str(cfg), "--out", str(plans), "--no-plots"]).exit_code == 0
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(cfg), "--plans", str(plans), "--out", str(out), "--set",
                                 "train.batch_size=2", "--set", "model.filters=[4, 8, 8, 8, 8, 8]"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    planned = yaml.safe_load(plans.read_text())["overrides"]
    assert saved["model"]["name"] == "dynunet" and saved["model"]["pool_strides"] == planned["model"]["pool_strides"]
    assert saved["train"]["patch_size"] == planned["train"]["patch_size"] and saved["train"]["batch_size"] == 2
    assert saved["data"]["preprocess"]["target_spacing"] == planned["data"]["preprocess"]["target_spacing"]
