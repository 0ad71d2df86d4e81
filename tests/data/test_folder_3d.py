"""The general reader on 3D multi-channel NIfTI sites, and problem reporting on corrupted data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fake_datasets import write_metadata, write_nifti_case, write_nifti_site, write_png_case, write_png_site
from fedseg.config import DataConfig
from fedseg.data.base import DataError
from fedseg.data.build import build_federated_data
from fedseg.data.folder import check_dataset, load_folder_federation


def _cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(source="folder", root=root, **kw)  # type: ignore[arg-type]


def test_3d_multichannel_sites_resampled_and_cropped(tmp_path: Path) -> None:
    # site A: 1 x 1 x 3 mm, 8x6x4 voxels; site B: 0.5 x 0.5 x 1.5 mm, 16x12x8 (same field of view)
    write_nifti_site(tmp_path / "A", 3, shape=(8, 6, 4), spacing=(1.0, 1.0, 3.0), labels=(1, 2))
    write_nifti_site(tmp_path / "B", 3, shape=(16, 12, 8), spacing=(0.5, 0.5, 1.5), labels=(1, 2))
    cfg = _cfg(tmp_path, channels=2, num_classes=3,
               preprocess={"target_spacing": [1.0, 1.0, 1.5], "target_shape": [8, 8, 8]})
    fd = build_federated_data(cfg, seed=0)
    assert (fd.spatial_dims, fd.in_channels, fd.num_classes) == (3, 2, 3)
    for site in fd.sites:
        assert len(site.train) + len(site.val) + len(site.test) == 3
        assert site.train.images.shape[1:] == (2, 8, 8, 8) and site.train.images.dtype == torch.float32
        assert site.train.masks.shape[1:] == (1, 8, 8, 8) and site.train.masks.dtype == torch.int64
        # resampled to 1 x 1 x 1.5 mm (8x6x8 voxels) then padded to 8x8x8: spacing is the resampled one
        torch.testing.assert_close(site.train.spacing[0], torch.tensor([1.0, 1.0, 1.5], dtype=torch.float64))
        assert set(site.train.masks.unique().tolist()) <= {0, 1, 2}
    a, b = fd.site("A").train, fd.site("B").train
    assert int((a.masks > 0).sum()) > 0 and int((b.masks > 0).sum()) > 0


def test_4d_single_file_case_and_label_map(tmp_path: Path) -> None:
    site = tmp_path / "S"
    (site / "images").mkdir(parents=True)
    (site / "masks").mkdir()
    for i in range(3):
        arr = np.random.default_rng(i).random((4, 4, 4, 2)).astype(np.float32)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(site / "images" / f"c{i}.nii.gz"))
        mask = np.zeros((4, 4, 4), np.uint8)
        mask[0, 0, :] = [0, 1, 2, 4]
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(site / "masks" / f"c{i}.nii.gz"))
    fd = load_folder_federation(_cfg(tmp_path, channels=2, num_classes=4, label_map={0: 0, 2: 1, 1: 2, 3: 2, 4: 3}),
                                seed=0)
    masks = torch.cat([fd.sites[0].train.masks, fd.sites[0].val.masks, fd.sites[0].test.masks])
    assert masks[:, 0, 0, 0, :].tolist() == [[0, 2, 1, 3]] * 3


CORRUPT_3D = {
    "truncated": "truncated or incomplete NIfTI file",
    "nan": "NaN",
    "label7": "mask values 7 are not in the label map",
    "moved": "affine mismatch",
    "onechannel": "case 'onechannel' has 1 channel file(s), expected 2",
    "gap": "channel file(s) gap_0001 missing",
}


def _corrupt_3d(root: Path) -> dict[str, Path]:
    """A 3D dataset with one good case per problem kind; returns the file each problem is about."""
    site = root / "S"
    write_nifti_site(site, 3)
    files = {}
    write_nifti_case(site, "truncated", seed=5)
    raw = (site / "images" / "truncated_0001.nii.gz").read_bytes()
    (site / "images" / "truncated_0001.nii.gz").write_bytes(raw[: len(raw) // 2])
    files["truncated"] = site / "images" / "truncated_0001.nii.gz"
    write_nifti_case(site, "nan", seed=6)
    arr = np.ones((8, 6, 4), np.float32)
    arr[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 3.0, 1.0])), str(site / "images" / "nan_0000.nii.gz"))
    files["nan"] = site / "images" / "nan_0000.nii.gz"
    write_nifti_case(site, "label7", labels=(7,), seed=7)
    files["label7"] = site / "masks" / "label7.nii.gz"
    write_nifti_case(site, "moved", seed=8)
    mask = nib.load(str(site / "masks" / "moved.nii.gz"))
    shifted = mask.affine.copy()
    shifted[0, 3] = 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(mask.dataobj), shifted), str(site / "masks" / "moved.nii.gz"))
    files["moved"] = site / "masks" / "moved.nii.gz"
    write_nifti_case(site, "onechannel", seed=9)
    (site / "images" / "onechannel_0001.nii.gz").unlink()
    files["onechannel"] = site / "images" / "onechannel_0000.nii.gz"
    write_nifti_case(site, "gap", channels=3, seed=10)
    (site / "images" / "gap_0001.nii.gz").unlink()
    files["gap"] = site / "images"
    return files


def test_corrupted_3d_dataset_reports_every_file(tmp_path: Path) -> None:
    files = _corrupt_3d(tmp_path)
    report = check_dataset(_cfg(tmp_path, channels=2))
    errors = [str(p) for p in report.errors]
    for kind, needle in CORRUPT_3D.items():
        hits = [e for e in errors if needle in e and str(files[kind]) in e]
        assert len(hits) == 1, (kind, errors)
    assert len(errors) == len(CORRUPT_3D)
    assert report.sites[0].cases == 3  # the good cases are still tabulated
    with pytest.raises(DataError) as err:
        load_folder_federation(_cfg(tmp_path, channels=2), seed=0)
    assert f"{len(CORRUPT_3D)} problem(s)" in str(err.value)
    assert [str(p) for p in err.value.problems] == errors  # the run's list is the check's list


def _corrupt_2d(root: Path) -> None:
    write_png_site(root / "A", 3)
    write_png_case(root / "A", "wrongsize", mask_size=(10, 10))
    write_png_case(root / "A", "label7", label=7)
    write_png_case(root / "A", "nomask")
    (root / "A" / "masks" / "nomask.png").unlink()
    write_metadata(root / "A", [{"id": s, "case": s} for s in
                                ["img_00_0", "img_01_0", "img_02_0", "wrongsize", "label7", "nomask"]])
    (root / "Empty" / "images").mkdir(parents=True)
    (root / "Empty" / "masks").mkdir()


def test_corrupted_2d_dataset_reports_every_file(tmp_path: Path) -> None:
    _corrupt_2d(tmp_path)
    report = check_dataset(_cfg(tmp_path, group_column={"A": "case"}))
    errors = [str(p) for p in report.errors]
    a = tmp_path / "A"
    assert any(str(a / "masks" / "wrongsize.png") in e and "size mismatch" in e for e in errors)
    assert any(str(a / "masks" / "label7.png") in e and "mask values 7" in e for e in errors)
    assert any(str(a / "images" / "nomask.png") in e and "image without mask" in e for e in errors)
    assert any(str(tmp_path / "Empty" / "images") in e and "empty site" in e for e in errors)
    assert len(errors) == 4, errors


def test_split_by_group_and_split_file_round_trip(tmp_path: Path) -> None:
    write_png_site(tmp_path / "A", 6, per_group=2)
    cfg = _cfg(tmp_path, group_column="case", image_size=[8, 8])
    fd = load_folder_federation(cfg, seed=3)
    site = fd.sites[0]
    groups = [{i.split("_")[1] for i in s.ids} for s in (site.train, site.val, site.test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"sites": {"A": {"train": site.test.ids, "val": site.val.ids,
                                                      "test": site.train.ids}}}))
    swapped = load_folder_federation(cfg.model_copy(update={"split_file": split_file}), seed=99).sites[0]
    assert swapped.train.ids == site.test.ids and swapped.test.ids == site.train.ids
    torch.testing.assert_close(swapped.test.images, site.train.images)


def test_split_file_problems(tmp_path: Path) -> None:
    write_png_site(tmp_path / "A", 3)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sites": {"A": {"train": ["img_00_0", "ghost"], "test": ["img_01_0"]},
                                         "Z": {"train": ["x"]}}}))
    report = check_dataset(_cfg(tmp_path, split_file=bad))
    text = "\n".join(str(p) for p in report.problems)
    assert "case id(s) ghost not found" in text and "site(s) Z are not in the data" in text
    assert "1 case(s) not in the split file are left out: img_02_0" in text  # a warning
    assert {p.severity for p in report.problems if "left out" in p.message} == {"warning"}
    bad.write_text(json.dumps({"sites": {"A": {"train": ["img_00_0"], "test": ["img_00_0"]}}}))
    with pytest.raises(DataError, match="'img_00_0' of site 'A' is in both train and test"):
        load_folder_federation(_cfg(tmp_path, split_file=bad), seed=0)


def test_per_site_group_column(tmp_path: Path) -> None:
    write_png_site(tmp_path / "Grouped", 4, per_group=2)
    write_png_site(tmp_path / "Plain", 4)
    (tmp_path / "Plain" / "metadata.csv").unlink()
    fd = load_folder_federation(_cfg(tmp_path, group_column={"Grouped": "case"}), seed=0)
    grouped = fd.site("Grouped")
    parts = [{i.split("_")[1] for i in s.ids} for s in (grouped.train, grouped.val, grouped.test)]
    assert sum(len(p) for p in parts) == 4 and not (parts[0] & parts[2])
    assert sum(len(s) for s in (fd.site("Plain").train, fd.site("Plain").val, fd.site("Plain").test)) == 4


def test_rgb_and_grey_inputs(tmp_path: Path) -> None:
    write_png_site(tmp_path / "A", 3, rgb=True)
    write_png_site(tmp_path / "B", 3)
    fd = load_folder_federation(_cfg(tmp_path, channels=3), seed=0)
    assert fd.site("A").train.images.shape[1] == 3 and fd.site("B").train.images.shape[1] == 3
    grey = load_folder_federation(_cfg(tmp_path, channels=1), seed=0)
    assert grey.site("A").train.images.shape[1] == 1
