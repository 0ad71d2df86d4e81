"""Acceptance: 3D FedAvg on the real BRATS 2013 subset (2 simulated sites, 32^3 patches, 2 rounds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import SHARED_DATA
from fedseg.config import load_config
from fedseg.engine.rundir import read_metrics
from fedseg.runtime.inference import predict_file
from fedseg.runtime.sim import run_inprocess

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "brats_fedavg_3d.yaml"
BRATS = SHARED_DATA / "brats2013_deepmedic_subset"


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not BRATS.is_dir(), reason=f"real data not found at {BRATS}")
def test_brats_fedavg_3d_on_two_simulated_sites_writes_per_site_dice_and_hd95_in_mm_then_predicts(
    tmp_path: Path,
) -> None:
    cfg = load_config(CONFIG, [f"data.root={BRATS}", f"data.cache_dir={tmp_path / 'cache'}"])
    assert cfg.train.patch_size == [32, 32, 32] and cfg.federation.rounds == 2
    run_inprocess(cfg, tmp_path / "run", write_report=False)

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    sites = summary["test"]["global"]
    assert sorted(sites) == ["site0", "site1"]
    # field of view of the preprocessed grid: 96 x 112 x 72 voxels of (2, 2, 155/78) mm
    diagonal_mm = math.dist((0, 0, 0), (96 * 2.0, 112 * 2.0, 72 * 155 / 78))
    for metrics in sites.values():
        assert 0.0 <= metrics["dice"] <= 1.0
        assert 0.0 <= metrics["hd95"] <= diagonal_mm
    test = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("kind") == "eval" and r.get("split") == "test"]
    assert {r["site"] for r in test} == {"site0", "site1"}
    assert all(f"hd95_c{k}" in r and f"dice_c{k}" in r for r in test for k in (1, 2, 3))
    assert max(r["round"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2

    # fedseg predict on a real case: the FLAIR file brings its T1c sibling; the mask keeps the input grid
    flair = BRATS / "all" / "images" / "brats_2013_pat0005_1_0000.nii.gz"
    result = predict_file(tmp_path / "run", [flair], tmp_path / "pat0005_seg.nii.gz")
    given, written = nib.load(flair), nib.load(tmp_path / "pat0005_seg.nii.gz")
    assert np.array_equal(written.affine, given.affine)
    assert written.shape == given.shape == result.shape == (240, 240, 155)
    assert set(result.voxels) <= {0, 1, 2, 3}
