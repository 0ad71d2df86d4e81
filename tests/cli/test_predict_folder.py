from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.cli.main import app
from fedseg.config import config_from_dict
from fedseg.data.preprocess import GeometryInfo
from fedseg.runtime.predict_folder import folder_cases, mirror_axes, restore_probabilities
from fedseg.runtime.sim import run_inprocess
from fedseg.runtime.trained import EvalError

runner = CliRunner()


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "fedavg2d"
    run_inprocess(config_from_dict(tiny_config("fedavg", dims=2, rounds=1)), path, write_report=False)
    return path


def _png(path: Path, shape: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    grey = np.clip(rng.normal(90, 20, size=shape), 0, 255).astype(np.uint8)
    grey[shape[0] // 4: shape[0] // 2, shape[1] // 4: shape[1] // 2] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey).save(path)


def test_folder_mode_writes_one_png_mask_per_image_on_its_own_grid(run_2d: Path, tmp_path: Path) -> None:
    _png(tmp_path / "in" / "a.png", (16, 16), 0)
    _png(tmp_path / "in" / "b_0000.png", (19, 23), 1)  # nnU-Net channel naming: the case is "b"
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    result = runner.invoke(app, ["predict", str(run_2d), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                 "--save-probabilities"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.npz", "a.png", "b.npz", "b.png"]
    with Image.open(tmp_path / "out" / "b.png") as mask:
        labels = np.asarray(mask)
    assert labels.shape == (19, 23)
    probs = np.load(tmp_path / "out" / "b.npz")["probabilities"]
    assert probs.shape == (2, 19, 23) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(probs.argmax(0), labels)  # the mask is the argmax of the native-grid probabilities


def test_folder_mode_with_tta_and_nifti_volumes(tmp_path: Path) -> None:
    run = tmp_path / "run3d"
    run_inprocess(config_from_dict(tiny_config("fedavg", dims=3, rounds=1)), run, write_report=False)
    affine = np.diag([0.9, 1.1, 2.5, 1.0])
    for name, shape in (("v1", (10, 9, 6)), ("v2", (8, 8, 8))):
        data = np.random.default_rng(len(name)).normal(size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{name}.nii.gz")
    result = runner.invoke(app, ["predict", str(run), "-i", str(tmp_path), "-o", str(tmp_path / "out"), "--tta"])
    assert result.exit_code == 0, result.output
    for name, shape in (("v1", (10, 9, 6)), ("v2", (8, 8, 8))):
        written = nib.load(tmp_path / "out" / f"{name}.nii.gz")
        assert written.shape == shape
        assert np.array_equal(written.affine, nib.load(tmp_path / f"{name}.nii.gz").affine)


def test_predict_refuses_files_and_folder_together(run_2d: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", str(run_2d), str(tmp_path / "x.png"), "-i", str(tmp_path), "-o", "o"])
    assert result.exit_code == 2


def test_folder_cases_group_channel_files_and_report_a_missing_one(tmp_path: Path) -> None:
    for name in ("c_0000.png", "c_0001.png", "d_0000.png"):
        _png(tmp_path / name, (8, 8), 0)
    with pytest.raises(EvalError, match="'d' has channel files \\[0\\], the model takes 2"):
        folder_cases(tmp_path, 2)
    (tmp_path / "d_0000.png").unlink()
    cases = folder_cases(tmp_path, 2)
    assert [(c.name, [f.name for f in c.files]) for c in cases] == [("c", ["c_0000.png", "c_0001.png"])]


def test_mirror_axes_are_every_subset_of_the_spatial_axes() -> None:
    assert mirror_axes(2) == [(), (2,), (3,), (2, 3)]
    assert len(set(mirror_axes(3))) == 8


def test_restore_probabilities_puts_cropped_borders_back_as_background() -> None:
    probs = np.zeros((2, 4, 4), dtype=np.float32)
    probs[1] = 1.0
    info = GeometryInfo(original_shape=(6, 4), original_spacing=(1.0, 1.0), oriented_shape=(6, 4),
                        resampled_shape=(6, 4), pad_crop=((-1, -1), (0, 0)), shape=(4, 4), spacing=(1.0, 1.0),
                        orientation=None)
    out = restore_probabilities(probs, info)
    assert out.shape == (2, 6, 4)
    assert np.array_equal(out[1, 1:5], np.ones((4, 4))) and np.array_equal(out[0, [0, 5]], np.ones((2, 4)))
