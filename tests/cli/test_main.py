from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import SHARED_DATA, tiny_config
from fedseg.algorithms import ALGORITHMS
from fedseg.cli.main import app

runner = CliRunner()


def _write_cfg(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_algorithms_lists_every_registered_name() -> None:
    result = runner.invoke(app, ["algorithms"])
    assert result.exit_code == 0
    for name in ALGORITHMS.names():
        assert name in result.output


def test_run_rejects_unknown_key_naming_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(_write_cfg(tmp_path, tiny_config())), "--set", "federation.roundz=3"])
    assert result.exit_code == 2
    assert "federation.roundz" in result.output and "rounds" in result.output


def test_run_rejects_unknown_algorithm_hyperparameter(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(_write_cfg(tmp_path, tiny_config("fedprox"))), "--set", "algorithm.nu=1"])
    assert result.exit_code == 2 and "algorithm.nu" in result.output


def _site_folder(root: Path, n: int = 3) -> Path:
    site = root / "newsite"
    (site / "images").mkdir(parents=True)
    (site / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, size=(20, 20), dtype=np.uint8)
        mask = np.zeros((20, 20), dtype=np.uint8)
        mask[5:12, 6:14] = 1
        Image.fromarray(img).save(site / "images" / f"case{i}.png")
        Image.fromarray(mask).save(site / "masks" / f"case{i}.png")
    return site


def test_run_then_eval_report_on_a_new_site_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_write_cfg(tmp_path, tiny_config())), "--out", str(out),
                                 "--set", "federation.rounds=1"])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").is_file() and list((out / "plots").glob("*.png"))
    assert "fedseg run" in (out / "command.txt").read_text()
    assert "site0" in (out / "report.md").read_text()

    own = runner.invoke(app, ["eval", str(out)])
    assert own.exit_code == 0 and "site0" in own.output and "site1" in own.output

    new = runner.invoke(app, ["eval", str(out), "--data", str(_site_folder(tmp_path))])
    assert new.exit_code == 0, new.output
    assert "newsite" in new.output and "3" in new.output

    missing = runner.invoke(app, ["eval", str(out), "--data", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "nowhere" in missing.output

    rep = runner.invoke(app, ["report", str(out)])
    assert rep.exit_code == 0 and "report.md" in rep.output


def test_resume_flag_continues_a_finished_run(tmp_path: Path) -> None:
    cfg = _write_cfg(tmp_path, tiny_config(rounds=1))
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(cfg), "--out", str(out)]).exit_code == 0
    again = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output
    assert runner.invoke(app, ["run", str(cfg), "--out", str(out), "--resume"]).exit_code == 0


BUSBRA = SHARED_DATA / "busbra_scanners"


@pytest.mark.realdata
@pytest.mark.skipif(not BUSBRA.is_dir(), reason="needs ../shared/data/busbra_scanners")
def test_fedavg_on_busbra_scanners_at_128_lists_all_sites_and_evals_a_site(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "busbra_fedavg.yaml"
    out = tmp_path / "busbra"
    result = runner.invoke(app, ["run", str(config), "--out", str(out), "--set", f"data.root={BUSBRA}",
                                 "--set", "federation.rounds=1", "--set", "model.channels=[8,16,32]",
                                 "--set", "model.strides=[2,2]"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    for site in ("GE_Logiq7", "Toshiba_Aplio300", "U-Systems"):
        assert site in report
    ev = runner.invoke(app, ["eval", str(out), "--data", str(BUSBRA / "U-Systems")])
    assert ev.exit_code == 0, ev.output
    assert "U-Systems" in ev.output and "25" in ev.output
