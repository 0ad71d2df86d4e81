"""``fedseg data check``: every problem named with its file; a run on the same data refuses to start
with the same list; a good run writes a reusable splits.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import SHARED_DATA, tiny_config
from fake_datasets import write_metadata, write_nifti_case, write_nifti_site, write_png_case, write_png_site
from fedseg.cli.main import app

runner = CliRunner()


def _flat(text: str) -> str:
    """CLI output without table borders or line breaks (rich folds long cells)."""
    return re.sub(r"[\s│┃|]+", "", text)


def _config(tmp_path: Path, data: dict[str, Any], **extra: Any) -> Path:
    cfg = tiny_config(rounds=1)
    cfg["data"] = data
    cfg.update(extra)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _corrupt_3d(root: Path) -> dict[str, tuple[Path, str]]:
    site = root / "S"
    write_nifti_site(site, 3, channels=1)
    write_nifti_case(site, "trunc", channels=1, seed=5)
    raw = (site / "images" / "trunc_0000.nii.gz").read_bytes()
    (site / "images" / "trunc_0000.nii.gz").write_bytes(raw[: len(raw) // 2])
    write_nifti_case(site, "nan", channels=1, seed=6)
    arr = np.zeros((8, 6, 4), np.float32)
    arr[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 3.0, 1.0])), str(site / "images" / "nan_0000.nii.gz"))
    write_nifti_case(site, "seven", channels=1, labels=(7,), seed=7)
    return {
        "trunc": (site / "images" / "trunc_0000.nii.gz", "truncated or incomplete NIfTI file"),
        "nan": (site / "images" / "nan_0000.nii.gz", "1 NaN and 0 inf value(s)"),
        "seven": (site / "masks" / "seven.nii.gz", "mask values 7 are not in the label map"),
    }


def _corrupt_2d(root: Path) -> dict[str, tuple[Path, str]]:
    write_png_site(root / "A", 3)
    write_png_case(root / "A", "wrongsize", mask_size=(10, 10))
    write_png_case(root / "A", "seven", label=7)
    write_metadata(root / "A", [{"id": s, "case": s} for s in ["img_00_0", "img_01_0", "img_02_0", "wrongsize", "seven"]])
    (root / "Empty" / "images").mkdir(parents=True)
    (root / "Empty" / "masks").mkdir()
    return {
        "wrongsize": (root / "A" / "masks" / "wrongsize.png", "size mismatch"),
        "seven": (root / "A" / "masks" / "seven.png", "mask values 7 are not in the label map"),
        "empty": (root / "Empty" / "images", "site folder has no images (empty site)"),
    }


@pytest.mark.parametrize("dims", [2, 3])
def test_check_names_every_file_and_run_refuses_with_the_same_list(tmp_path: Path, dims: int) -> None:
    root = tmp_path / "data"
    expected = _corrupt_2d(root) if dims == 2 else _corrupt_3d(root)
    check = runner.invoke(app, ["data", "check", str(root)])
    assert check.exit_code == 1, check.output
    flat = _flat(check.output)
    for path, message in expected.values():
        assert _flat(str(path)) in flat and _flat(message) in flat, (path, message, check.output)
    assert f"{len(expected)}error(s)" in flat

    data: dict[str, Any] = {"source": "folder", "root": str(root), "channels": 1}
    if dims == 2:
        data["image_size"] = [8, 8]
    out = tmp_path / "run"
    run = runner.invoke(app, ["run", str(_config(tmp_path, data)), "--out", str(out)])
    assert run.exit_code == 1, run.output  # a data error (fedseg -h: exit codes)
    flat_run = _flat(run.output)
    assert f"{len(expected)}problem(s)" in flat_run
    for path, message in expected.values():
        assert _flat(f"{path}") in flat_run and _flat(message) in flat_run, (path, run.output)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # refused before training


def test_clean_dataset_exit_zero_and_site_table(tmp_path: Path) -> None:
    write_png_site(tmp_path / "A", 4, per_group=2)
    write_png_site(tmp_path / "B", 3)
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no errors" in result.output and "A" in result.output and "B" in result.output
    single = runner.invoke(app, ["data", "check", str(tmp_path / "A")])  # one site folder
    assert single.exit_code == 0 and "A" in single.output


def test_check_with_config_and_num_classes(tmp_path: Path) -> None:
    write_png_site(tmp_path / "A", 3)
    write_png_case(tmp_path / "A", "img_09_0", label=2)
    assert runner.invoke(app, ["data", "check", str(tmp_path)]).exit_code == 1  # binary by default
    assert runner.invoke(app, ["data", "check", str(tmp_path), "--num-classes", "3"]).exit_code == 0
    assert runner.invoke(app, ["data", "check", str(tmp_path), "--set", "data.num_classes=3"]).exit_code == 0
    cfg = _config(tmp_path, {"source": "folder", "root": str(tmp_path), "num_classes": 3, "group_column": "case"})
    result = runner.invoke(app, ["data", "check", "--config", str(cfg)])
    assert result.exit_code == 1  # img_09_0 has no metadata row
    assert _flat("no row with id img_09_0") in _flat(result.output)
    missing = runner.invoke(app, ["data", "check", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and _flat("no such file or folder") in _flat(missing.output)


def test_run_writes_reusable_splits_json(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png_site(root / "A", 5, per_group=2)
    write_png_site(root / "B", 4)
    data = {"source": "folder", "root": str(root), "image_size": [16, 16], "group_column": "case"}
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_config(tmp_path, data)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    splits = json.loads((out / "splits.json").read_text())
    assert splits["seed"] == 0 and set(splits["sites"]) == {"A", "B"}
    a = splits["sites"]["A"]
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(f"img_{g:02d}_{k}" for g in range(5) for k in range(2))
    # reuse it under another seed: same splits
    data2 = {**data, "split_file": str(out / "splits.json")}
    out2 = tmp_path / "run2"
    cfg2 = _config(tmp_path, data2, seed=7)
    assert runner.invoke(app, ["run", str(cfg2), "--out", str(out2)]).exit_code == 0
    assert json.loads((out2 / "splits.json").read_text())["sites"] == splits["sites"]


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["busbra_scanners", "brats2013_deepmedic_subset"])
def test_real_datasets_report_no_errors(name: str) -> None:
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    if name == "busbra_scanners":  # the full walk is make-bench territory; the smallest scanner here
        root = root / "U-Systems"
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert "no errors" in result.output and "preset" in result.output
