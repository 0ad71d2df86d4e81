"""A federated run on a 3D folder dataset whose cases differ in shape: patches for training, the
sliding window case by case for evaluation, every split streamed from the case cache (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_config
from fake_datasets import write_nifti_case
from fedseg.config import config_from_dict
from fedseg.runtime.sim import run_inprocess

pytestmark = pytest.mark.slow


def test_a_3d_folder_dataset_of_mixed_shapes_trains_and_evaluates(tmp_path: Path) -> None:
    shapes = [(8, 6, 4), (10, 6, 4), (8, 7, 5), (9, 9, 4), (8, 6, 4), (7, 6, 6), (12, 8, 4), (8, 8, 8)]
    for site in ("A", "B"):
        for i, shape in enumerate(shapes):
            write_nifti_case(tmp_path / "data" / site, f"{site}{i}", shape=shape, spacing=(1.0, 1.0, 1.0),
                             channels=1, seed=i)
    cfg = tiny_config("fedavg", dims=3, rounds=2)
    cfg["data"] = {"source": "folder", "root": str(tmp_path / "data"), "channels": 1,
                   "cache_dir": str(tmp_path / "cache"), "split": {"train": 0.5, "val": 0.25, "test": 0.25}}
    cfg["train"].update({"patch_size": [8, 8, 4], "batch_size": 2, "num_workers": 1})
    run_inprocess(config_from_dict(cfg), tmp_path / "run", resume=False, write_report=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows if r["kind"] == "round"] == [1, 2]
    test = [r for r in rows if r.get("kind") == "eval" and r.get("split") == "test"]
    assert {r["site"] for r in test} == {"A", "B"} and all(0.0 <= r["dice"] <= 1.0 for r in test)
