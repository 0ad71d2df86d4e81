from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.cli.main import app
from fedseg.config import config_from_dict
from fedseg.runtime.sim import run_inprocess

runner = CliRunner()


def test_predict_command_writes_a_nifti_with_the_input_affine(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_inprocess(config_from_dict(tiny_config("fedavg", dims=3, rounds=1)), run_dir, write_report=False)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 2.0]
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(12, 10, 5)).astype(np.float32), affine),
             tmp_path / "vol.nii.gz")

    result = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "vol.nii.gz"), "-o",
                                 str(tmp_path / "vol_seg.nii.gz")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "vol_seg.nii.gz" in text and "12x10x5" in text
    written = nib.load(tmp_path / "vol_seg.nii.gz")
    assert np.array_equal(written.affine, nib.load(tmp_path / "vol.nii.gz").affine) and written.shape == (12, 10, 5)


def test_predict_command_reports_a_bad_run_directory_and_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", str(tmp_path / "nope"), str(tmp_path / "x.png"), "-o", "y.png"])
    assert result.exit_code == 2
    assert "not a finished fedseg run" in " ".join(result.output.split())  # rich wraps long lines
