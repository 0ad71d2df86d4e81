from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.data.base import DataError
from fedseg.runtime.inference import EvalError, channel_files, overlay_path_for, predict_file
from fedseg.runtime.sim import run_inprocess


def _train(path: Path, cfg: dict[str, Any]) -> Path:
    run_inprocess(config_from_dict(cfg), path, write_report=False)
    return path


@pytest.fixture(scope="module")
def run_3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FedBN on 3D synthetic volumes, trained on 8^3 patches (so prediction uses a sliding window)."""
    cfg = tiny_config("fedbn", dims=3, rounds=1, train={"patch_size": [8, 8, 8]})
    cfg["data"]["synthetic"]["size"] = 16
    return _train(tmp_path_factory.mktemp("runs") / "fedbn3d", cfg)


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("runs") / "fedavg2d", tiny_config("fedavg", dims=2, rounds=1))


def _oblique_affine() -> np.ndarray:
    """Anisotropic (0.7, 1.3, 2.5) mm voxels, rotated 20 degrees about z, shifted."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 1.3, 2.5])
    affine[:3, 3] = [-12.5, 30.0, 7.25]
    return affine


def _write_volume(path: Path, shape: tuple[int, ...] = (21, 18, 11)) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=shape).astype(np.float32)
    data[6:14, 5:12, 3:8] += 3.0
    nib.save(nib.Nifti1Image(data, _oblique_affine()), path)


@pytest.mark.parametrize("client", [None, "site1"])
def test_predict_nifti_writes_a_mask_with_the_input_affine_and_shape(
    run_3d: Path, tmp_path: Path, client: str | None
) -> None:
    _write_volume(tmp_path / "case_0000.nii.gz")
    out = tmp_path / "pred" / "case.nii.gz"
    result = predict_file(run_3d, [tmp_path / "case_0000.nii.gz"], out, client=client)
    given, written = nib.load(tmp_path / "case_0000.nii.gz"), nib.load(out)
    assert np.array_equal(written.affine, given.affine)
    assert np.array_equal(written.header.get_sform(), given.header.get_sform())
    assert np.array_equal(written.header.get_qform(), given.header.get_qform())
    assert written.shape == (21, 18, 11) == result.shape
    assert result.spacing == pytest.approx((0.7, 1.3, 2.5))
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) <= {0, 1}
    assert sum(result.voxels.values()) == 21 * 18 * 11 and result.overlay_path is None
    # FedBN on new data: the mean of the clients' norm layers, never the untrained global ones
    assert result.model == ("personal" if client else "unseen") and result.selected_round == 1


def test_predict_png_writes_a_mask_of_the_input_size_and_an_overlay(run_2d: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = np.clip(rng.normal(100, 20, size=(19, 23)), 0, 255).astype(np.uint8)
    grey[5:12, 6:15] = 220
    Image.fromarray(grey).save(tmp_path / "scan.png")
    result = predict_file(run_2d, [tmp_path / "scan.png"], tmp_path / "out" / "scan_mask.png")
    with Image.open(tmp_path / "out" / "scan_mask.png") as mask:
        assert mask.size == (23, 19) and mask.mode == "L"
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1}
    assert result.overlay_path == tmp_path / "out" / "scan_mask_overlay.png"
    with Image.open(result.overlay_path) as overlay:
        assert overlay.size == (23, 19) and overlay.mode == "RGB"


def test_channel_siblings_are_found_from_the_first_channel_file(tmp_path: Path) -> None:
    for c in range(2):
        (tmp_path / f"pat1_{c:04d}.nii.gz").touch()
    assert channel_files([tmp_path / "pat1_0000.nii.gz"], 2) == [tmp_path / "pat1_0000.nii.gz",
                                                                   tmp_path / "pat1_0001.nii.gz"]
    assert channel_files([tmp_path / "pat1_0000.nii.gz"], 1) == [tmp_path / "pat1_0000.nii.gz"]
    with pytest.raises(EvalError, match="pat1_0002"):
        channel_files([tmp_path / "pat1_0000.nii.gz"], 3)


def test_overlay_name_drops_the_double_suffix() -> None:
    assert overlay_path_for(Path("a/b/case.nii.gz")) == Path("a/b/case_overlay.png")


def test_predict_rejects_an_unknown_client_and_a_2d_file_for_a_3d_model(run_3d: Path, tmp_path: Path) -> None:
    _write_volume(tmp_path / "v.nii.gz")
    with pytest.raises(EvalError, match="site9"):
        predict_file(run_3d, [tmp_path / "v.nii.gz"], tmp_path / "o.nii.gz", client="site9")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "flat.png")
    with pytest.raises(DataError, match="3D"):
        predict_file(run_3d, [tmp_path / "flat.png"], tmp_path / "o.png")
