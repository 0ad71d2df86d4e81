"""A cross-modality federation end to end: a 3D NIfTI site sliced to 2D, a grey PNG site and an
RGB site reduced to one channel train a round of FedAvg; ``fedseg data check`` shows each site's
spec; a site that cannot reach the common channels is refused before training."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fake_datasets import write_nifti_case, write_png_case
from fedseg.cli.main import app

runner = CliRunner()


def _flat(text: str) -> str:
    return re.sub(r"[\s│┃|]+", "", text)


def _federation(root: Path) -> None:
    for i in range(4):
        write_nifti_case(root / "brain_mr", f"sub{i}", shape=(12, 10, 6), spacing=(1.0, 1.0, 2.0), channels=2,
                         fg_size=3, seed=i)
        write_png_case(root / "breast_us", f"us{i}", size=(20, 18), seed=i)
        write_png_case(root / "skin_rgb", f"derm{i}", size=(24, 20), rgb=True, label=255, seed=i)


def _data(root: Path, derm_channels: Any = "grey") -> dict[str, Any]:
    return {
        "source": "folder", "root": str(root), "spatial_dims": 2, "channels": 1, "num_classes": 2,
        "image_size": [16, 16],
        "sites": [
            {"name": "brain_mr", "modality": "MR", "channels": [1], "slice_axis": 2, "slice_keep_empty": 0.5,
             "preprocess": {"normalize": "zscore_nonzero"}},
            {"name": "breast_us", "modality": "US"},
            {"name": "skin_rgb", "modality": "dermoscopy", "channels": derm_channels, "label_map": {0: 0, 255: 1}},
        ],
    }


def _config(tmp_path: Path, data: dict[str, Any]) -> Path:
    cfg = tiny_config(rounds=1, sites=3)
    cfg["data"] = data
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_cross_modality_federation_checks_and_trains_a_round(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _federation(root)
    cfg = _config(tmp_path, _data(root))
    check = runner.invoke(app, ["data", "check", "--config", str(cfg)])
    assert check.exit_code == 0, check.output
    flat = _flat(check.output)
    assert _flat("site brain_mr: modality MR; channels [1] -> 1") in flat
    assert _flat("3D -> 2D slices along axis 2, 0.5 of empty slices kept") in flat
    assert _flat("site skin_rgb: modality dermoscopy; channels grey -> 1; label_map 0->0, 255->1") in flat
    assert _flat("site breast_us: modality US") in flat
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert result.exit_code == 0, result.output
    splits = json.loads((out / "splits.json").read_text())["sites"]
    assert set(splits) == {"brain_mr", "breast_us", "skin_rgb"}
    brain = {k: {i.rsplit("_slice", 1)[0] for i in v} for k, v in splits["brain_mr"].items()}
    assert not (brain["train"] & brain["val"]) and not (brain["train"] & brain["test"])
    assert all("_slice" in i for v in splits["brain_mr"].values() for i in v)


def test_site_that_cannot_reach_the_common_channels_is_refused_before_training(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _federation(root)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_config(tmp_path, _data(root, derm_channels=[0, 1]))), "--out", str(out)])
    assert result.exit_code != 0
    flat = _flat(result.output)
    assert _flat("data.sites[skin_rgb].channels = [0, 1] gives 2 input channel(s), but data.channels is 1") in flat
    assert not (out / "splits.json").exists()
