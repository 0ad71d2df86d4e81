from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.cli.main import app
from fedseg.config import config_from_dict
from fedseg.runtime.evaluate_folder import evaluate_folder, surface_dice
from fedseg.runtime.sim import run_inprocess
from fedseg.runtime.trained import EvalError

runner = CliRunner()


def _mask(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def test_hand_checked_dice_and_surface_dice(tmp_path: Path) -> None:
    ref = np.zeros((4, 4), dtype=np.uint8)
    ref[0:2, 0:2] = 1  # 4 pixels
    pred = ref.copy()
    pred[0, 2] = 1  # 5 pixels, 4 shared: Dice 8/9
    _mask(tmp_path / "gt" / "a.png", ref)
    _mask(tmp_path / "pr" / "a.png", pred)
    _mask(tmp_path / "gt" / "b.png", ref)
    _mask(tmp_path / "pr" / "b.png", ref)
    rows = evaluate_folder(tmp_path / "gt", tmp_path / "pr")
    assert [r["case"] for r in rows] == ["a", "b"]
    assert rows[0]["dice"] == pytest.approx(8 / 9) and rows[1]["dice"] == 1.0
    assert rows[1]["nsd"] == 1.0 and 0.0 < rows[0]["nsd"] <= 1.0


def test_surface_dice_of_both_empty_is_one_and_of_a_miss_zero() -> None:
    empty, full = np.zeros((5, 5), dtype=np.int64), np.zeros((5, 5), dtype=np.int64)
    full[1:4, 1:4] = 1
    assert surface_dice(empty, empty, 2, (1.0, 1.0), 1.0) == [1.0]
    assert surface_dice(empty, full, 2, (1.0, 1.0), 1.0) == [0.0]


def test_labels_select_the_scored_class_and_a_missing_prediction_is_named(tmp_path: Path) -> None:
    ref = np.zeros((6, 6), dtype=np.uint8)
    ref[0:2, 0:2], ref[3:5, 3:5] = 1, 2
    pred = ref.copy()
    pred[pred == 2] = 0  # class 2 missed
    _mask(tmp_path / "gt" / "a.png", ref)
    _mask(tmp_path / "pr" / "a.png", pred)
    assert evaluate_folder(tmp_path / "gt", tmp_path / "pr", labels=[1])[0]["dice"] == 1.0
    assert evaluate_folder(tmp_path / "gt", tmp_path / "pr", labels=[2])[0]["dice"] == 0.0
    both = evaluate_folder(tmp_path / "gt", tmp_path / "pr")[0]
    assert both["dice_c1"] == 1.0 and both["dice_c2"] == 0.0 and both["dice"] == 0.5
    _mask(tmp_path / "gt" / "z.png", ref)
    with pytest.raises(EvalError, match="no prediction for 1 reference case\\(s\\): z"):
        evaluate_folder(tmp_path / "gt", tmp_path / "pr")


@pytest.mark.slow
def test_evaluate_folder_reproduces_fedseg_evals_per_case_dice(tmp_path: Path) -> None:
    """predict -i + evaluate-folder on a site folder on the model's grid == fedseg eval --data's per-case Dice."""
    run = tmp_path / "run"
    run_inprocess(config_from_dict(tiny_config("fedavg", dims=2, rounds=1)), run, write_report=False)
    site = tmp_path / "site"
    rng = np.random.default_rng(3)
    for i in range(4):
        image = np.clip(rng.normal(80, 25, size=(16, 16)), 0, 255).astype(np.uint8)
        mask = np.zeros((16, 16), dtype=np.uint8)
        r, c = rng.integers(2, 8, size=2)
        mask[r: r + 6, c: c + 5] = 1
        image[mask == 1] = 220
        (site / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(site / "images" / f"c{i}.png")
        _mask(site / "masks" / f"c{i}.png", mask)
    evaluated = runner.invoke(app, ["eval", str(run), "--data", str(site), "--per-case", str(tmp_path / "eval.csv"),
                                    "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    cases = json.loads(evaluated.stdout)["cases"]
    with open(tmp_path / "eval.csv", newline="") as fh:
        assert [row["case"] for row in csv.DictReader(fh)] == ["c0", "c1", "c2", "c3", "mean"]
    predicted = runner.invoke(app, ["predict", str(run), "-i", str(site / "images"), "-o", str(tmp_path / "pred")])
    assert predicted.exit_code == 0, predicted.output
    scored = runner.invoke(app, ["evaluate-folder", str(site / "masks"), str(tmp_path / "pred"), "--json"])
    assert scored.exit_code == 0, scored.output
    folder = {r["case"]: r["dice"] for r in json.loads(scored.stdout)["cases"]}
    assert (tmp_path / "pred" / "per_case.csv").is_file()
    assert {c["case"]: pytest.approx(c["dice"], abs=1e-6) for c in cases} == folder
    assert len(set(folder.values())) > 1  # distinct per-case values: the match is case by case
