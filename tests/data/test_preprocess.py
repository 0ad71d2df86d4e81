"""Preprocessing on tiny volumes whose expected output is computed by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from fedseg.config import DataConfig
from fedseg.data.preprocess import GeometryInfo, preprocess_case, restore_geometry
from fedseg.io import DataError, Volume, read_image, read_mask, write_mask


def _vol(array: np.ndarray, spacing: tuple[float, ...], affine: np.ndarray | None = None) -> Volume:
    if affine is None and len(spacing) == 3:
        affine = np.diag([*spacing, 1.0])
    return Volume(array=array, spacing=spacing, affine=affine, paths=(Path("img.nii.gz"),))


def _mask(array: np.ndarray, spacing: tuple[float, ...], affine: np.ndarray | None = None) -> Volume:
    if affine is None and len(spacing) == 3:
        affine = np.diag([*spacing, 1.0])
    return Volume(array=array, spacing=spacing, affine=affine, paths=(Path("mask.nii.gz"),))


def _cfg(**pre: Any) -> DataConfig:
    extra = {k: pre.pop(k) for k in list(pre) if k in DataConfig.model_fields}
    pre.setdefault("normalize", "none")
    return DataConfig(preprocess=pre, **extra)


def test_resample_anisotropic_z_by_hand() -> None:
    # 2x2x2 voxels of 1 x 1 x 3 mm; z ramp 0 -> 3. Target 1.5 mm along z: 2 * 3 / 1.5 = 4 slices whose
    # centres sit at input coordinates (i + 0.5) * 0.5 - 0.5 = -0.25, 0.25, 0.75, 1.25 (edges aligned),
    # so linear interpolation (clamped at the border) gives 0, 0.75, 2.25, 3.
    img = np.zeros((1, 2, 2, 2), np.float32)
    img[..., 1] = 3.0
    mask = np.zeros((2, 2, 2), np.int64)
    mask[..., 1] = 1
    out = preprocess_case(_vol(img, (1.0, 1.0, 3.0)), _mask(mask, (1.0, 1.0, 3.0)), _cfg(target_spacing=[1, 1, 1.5]))
    assert out.image.shape == (1, 2, 2, 4) and out.image.dtype == np.float32
    np.testing.assert_allclose(out.image[0, 0, 0], [0.0, 0.75, 2.25, 3.0], rtol=0, atol=1e-6)
    # nearest: output slice i takes input slice floor((i + 0.5) / 2) = 0, 0, 1, 1
    assert out.mask is not None and out.mask.dtype == np.int64
    np.testing.assert_array_equal(out.mask[0, 0], [0, 0, 1, 1])
    assert out.spacing == pytest.approx((1.0, 1.0, 1.5))
    assert out.info.resampled_shape == (2, 2, 4) and out.info.original_spacing == (1.0, 1.0, 3.0)


def test_downsample_in_plane_by_hand() -> None:
    # 4 voxels of 0.5 mm -> 1 mm: 2 voxels at input coordinates 0.5 and 2.5, i.e. pair means.
    img = np.zeros((1, 4, 1, 1), np.float32)
    img[0, :, 0, 0] = [1.0, 3.0, 5.0, 11.0]
    out = preprocess_case(_vol(img, (0.5, 2.0, 2.0)), None, _cfg(target_spacing=[1, 2, 2], anti_aliasing=False))
    np.testing.assert_allclose(out.image[0, :, 0, 0], [2.0, 8.0], rtol=0, atol=1e-6)
    assert out.mask is None


def test_non_divisible_spacing_rounds_half_up_and_records_true_spacing() -> None:
    img = np.zeros((1, 5, 3, 7), np.float32)
    out = preprocess_case(_vol(img, (1.0, 1.0, 1.0)), None, _cfg(target_spacing=[2.0, 1.0, 3.0]))
    # 5 * 1/2 = 2.5 -> 3 voxels of 5/3 mm; 7 * 1/3 = 2.33 -> 2 voxels of 3.5 mm
    assert out.image.shape == (1, 3, 3, 2)
    assert out.spacing == pytest.approx((5 / 3, 1.0, 3.5))


def test_target_shape_only_and_legacy_image_size() -> None:
    img = np.random.default_rng(0).random((1, 6, 10)).astype(np.float32)
    cfg = DataConfig(image_size=[3, 5], pixel_spacing=[0.5, 0.2], preprocess={"normalize": "none"})
    vol = Volume(array=img, spacing=(1.0, 1.0), affine=None, paths=(Path("a.png"),))
    out = preprocess_case(vol, None, cfg)
    assert out.image.shape == (1, 3, 5)
    # pixel_spacing replaces the PNG's 1.0; 6 px of 0.5 mm into 3 -> 1.0 mm; 10 px of 0.2 into 5 -> 0.4
    assert out.spacing == pytest.approx((1.0, 0.4))
    assert out.info.original_spacing == (0.5, 0.2)


def test_crop_and_pad_to_target_shape() -> None:
    img = np.arange(4 * 4, dtype=np.float32).reshape(1, 4, 4)
    vol = Volume(array=img, spacing=(1.0, 1.0), affine=None, paths=(Path("a.png"),))
    out = preprocess_case(vol, None, _cfg(target_spacing=[1, 1], target_shape=[7, 3]))
    # axis 0: 4 -> 7, pad 1 before and 2 after (the odd voxel goes after); axis 1: 4 -> 3, crop 1 after
    assert out.info.pad_crop == ((1, 2), (0, -1))
    expected = np.zeros((7, 3), np.float32)
    expected[1:5] = img[0, :, :3]
    np.testing.assert_array_equal(out.image[0], expected)


def test_zscore_per_channel_nonzero_and_ct_window() -> None:
    img = np.array([[[0.0, 1.0, 3.0]], [[10.0, 10.0, 40.0]]], np.float32)  # (C=2, 1, 3)
    vol = Volume(array=img, spacing=(1.0, 1.0), affine=None, paths=(Path("a.png"),))
    z = preprocess_case(vol, None, DataConfig(channels=2)).image
    np.testing.assert_allclose(z.reshape(2, -1).mean(1), [0, 0], atol=1e-6)
    np.testing.assert_allclose(z.reshape(2, -1).std(1), [1, 1], atol=1e-5)
    nz = preprocess_case(vol, None, DataConfig(channels=2, preprocess={"normalize": "zscore_nonzero"})).image
    assert nz[0, 0, 0] == 0.0  # background untouched
    np.testing.assert_allclose(nz[0, 0, 1:], [-1.0, 1.0], atol=1e-6)  # values 1, 3: mean 2, sd 1
    ct = preprocess_case(vol, None, DataConfig(channels=2, preprocess={"normalize": "ct", "ct_window": [0, 20]})).image
    np.testing.assert_allclose(ct[1, 0], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(ct[0, 0], [0.0, 0.05, 0.15])


def test_input_volumes_are_not_modified() -> None:
    img = np.random.default_rng(0).random((1, 4, 4, 4)).astype(np.float32)
    mask = (img[0] > 0.5).astype(np.int64)
    before = img.copy(), mask.copy()
    for pre in ({}, {"target_shape": [4, 4, 4]}, {"normalize": "zscore_nonzero"}, {"target_spacing": [2, 2, 2]}):
        preprocess_case(_vol(img, (1.0,) * 3), _mask(mask, (1.0,) * 3), DataConfig(preprocess=pre))
    np.testing.assert_array_equal(img, before[0])
    np.testing.assert_array_equal(mask, before[1])


def test_brats_label_map_to_nested_regions() -> None:
    mask = np.array([[[0, 1, 2, 3, 4]]], np.uint8)
    img = np.ones((1, 1, 1, 5), np.float32)
    cfg = DataConfig(num_classes=4, label_map={0: 0, 2: 1, 1: 2, 3: 2, 4: 3}, preprocess={"normalize": "none"})
    out = preprocess_case(_vol(img, (1.0, 1.0, 1.0)), _mask(mask, (1.0, 1.0, 1.0)), cfg)
    assert out.mask is not None
    np.testing.assert_array_equal(out.mask[0, 0], [0, 2, 1, 2, 3])


def test_all_problems_of_a_case_together() -> None:
    img = np.ones((2, 4, 4, 4), np.float32)
    mask = np.zeros((4, 4, 4), np.int64)
    mask[0, 0, 0] = 7
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 2.0
    with pytest.raises(DataError) as err:
        preprocess_case(_vol(img, (1.0,) * 3), _mask(mask, (1.0,) * 3, shifted), DataConfig())
    msg = str(err.value)
    assert "img.nii.gz: 2 channel(s), expected 1" in msg
    assert "affine mismatch: mask mask.nii.gz" in msg
    assert "mask.nii.gz: mask values 7 are not in the label map [0, 1]" in msg
    with pytest.raises(DataError, match=r"shape mismatch: image img\.nii\.gz is \(4, 4, 4\) but mask"):
        preprocess_case(_vol(img[:1], (1.0,) * 3), _mask(mask[:3], (1.0,) * 3), DataConfig(num_classes=8))
    with pytest.raises(DataError, match=r"not in the label map \[0, 4\] \(data.label_map keys\)"):
        preprocess_case(_vol(img[:1], (1.0,) * 3), _mask(mask, (1.0,) * 3), DataConfig(label_map={0: 0, 4: 1}))


def test_restore_geometry_round_trip_with_orientation_resample_and_pad(tmp_path: Path) -> None:
    # file axes P, S, R (as the IXI volumes): reoriented to RAS, upsampled x2 on one axis, padded
    affine = np.array([[0, 0, 2.0, -10], [-2.0, 0, 0, 20], [0, 3.0, 0, -5], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(4, 3, 5)).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "m.nii.gz"))
    nib.save(nib.Nifti1Image(rng.random((4, 3, 5)).astype(np.float32), affine), str(tmp_path / "i.nii.gz"))
    image, mask = read_image(tmp_path / "i.nii.gz"), read_mask(tmp_path / "m.nii.gz")
    cfg = DataConfig(num_classes=3, preprocess={"orientation": "RAS", "target_spacing": [1.0, 2.0, 3.0],
                                                "target_shape": [12, 5, 3]})
    out = preprocess_case(image, mask, cfg)
    # RAS: R = file axis 2 (5 voxels, 2 mm), A = flipped axis 0 (4, 2 mm), S = axis 1 (3, 3 mm)
    assert out.info.oriented_shape == (5, 4, 3)
    assert out.info.resampled_shape == (10, 4, 3)
    assert out.image.shape == (1, 12, 5, 3) and out.info.pad_crop == ((1, 1), (0, 1), (0, 0))
    assert out.mask is not None
    np.testing.assert_array_equal(out.mask[1:11:2, :4, :], np.transpose(labels, (2, 0, 1))[:, ::-1, :])
    info = GeometryInfo.from_dict(out.info.to_dict())
    assert info == out.info
    back = restore_geometry(out.mask, info)
    np.testing.assert_array_equal(back, labels)
    write_mask(tmp_path / "pred.nii.gz", back, image)
    np.testing.assert_allclose(nib.load(str(tmp_path / "pred.nii.gz")).affine, affine)
    with pytest.raises(DataError, match="expected"):
        restore_geometry(out.mask[:-1], info)


def test_restore_geometry_after_downsampling_is_nearest() -> None:
    mask = np.zeros((8, 8), np.int64)
    mask[2:6, 2:6] = 1
    img = np.zeros((1, 8, 8), np.float32)
    vol = Volume(array=img, spacing=(1.0, 1.0), affine=None, paths=(Path("a.png"),))
    out = preprocess_case(vol, Volume(mask, (1.0, 1.0), None, (Path("m.png"),)), DataConfig(image_size=[4, 4]))
    assert out.mask is not None
    np.testing.assert_array_equal(out.mask[1:3, 1:3], 1)
    np.testing.assert_array_equal(restore_geometry(out.mask, out.info), mask)
