"""Tests for fedseg.io: NIfTI and PNG reading/writing, and the errors that name the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fedseg.data.base import DataError as DataErrorFromData
from fedseg.io import DataError, Problem, file_stem, read_image, read_mask, write_mask
from fedseg.io.errors import format_problems

AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, 0.8, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE, dtype: type | None = None) -> Path:
    img = nib.Nifti1Image(array.astype(dtype or array.dtype), affine)
    img.header.set_zooms(tuple(np.sqrt((affine[:3, :3] ** 2).sum(0)))[: array.ndim] + (1.0,) * max(0, array.ndim - 3))
    nib.save(img, str(path))
    return path


def test_data_error_is_shared_with_the_data_layer() -> None:
    assert DataErrorFromData is DataError
    err = DataError.from_problems([Problem("a.png", "bad"), Problem("b.png", "worse")], header="site S")
    assert str(err) == "site S: 2 problem(s):\n  - a.png: bad\n  - b.png: worse"
    assert [p.path for p in err.problems] == ["a.png", "b.png"]
    assert format_problems([Problem("", "x")]).endswith("- x")


def test_file_stem_knows_nii_gz() -> None:
    assert file_stem("x/case_0001.nii.gz") == "case_0001"
    assert file_stem("a.b.png") == "a.b"
    assert file_stem("m.nii") == "m"


def test_read_nifti_channels_spacing_affine(tmp_path: Path) -> None:
    a = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    p0 = _nifti(tmp_path / "c_0000.nii.gz", a)
    p1 = _nifti(tmp_path / "c_0001.nii.gz", -a)
    vol = read_image([p0, p1], channels=2)
    assert vol.array.shape == (2, 4, 3, 2) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array[1], -a)
    assert vol.spacing == pytest.approx((0.8, 0.8, 3.0))
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert vol.spatial_shape == (4, 3, 2) and vol.paths == (p0, p1)
    with pytest.raises(DataError, match=r"c_0000\.nii\.gz: 2 channel\(s\) read from 2 file\(s\), expected 3"):
        read_image([p0, p1], channels=3)


def test_read_4d_nifti_is_channels(tmp_path: Path) -> None:
    a = np.random.default_rng(0).random((5, 4, 3, 2)).astype(np.float32)
    vol = read_image(_nifti(tmp_path / "four.nii.gz", a))
    assert vol.array.shape == (2, 5, 4, 3)
    np.testing.assert_allclose(vol.array[1], a[..., 1])


def test_channel_files_must_share_grid(tmp_path: Path) -> None:
    p0 = _nifti(tmp_path / "c_0000.nii", np.zeros((4, 3, 2), np.float32))
    p1 = _nifti(tmp_path / "c_0001.nii", np.zeros((4, 3, 3), np.float32))
    with pytest.raises(DataError, match=r"c_0001\.nii: channel file has shape"):
        read_image([p0, p1])
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    p2 = _nifti(tmp_path / "c_0002.nii", np.zeros((4, 3, 2), np.float32), shifted)
    with pytest.raises(DataError, match=r"c_0002\.nii: affine differs from c_0000\.nii"):
        read_image([p0, p2])


def test_truncated_gz_names_file(tmp_path: Path) -> None:
    good = _nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).random((16, 16, 16)).astype(np.float32))
    raw = good.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"bad\.nii\.gz: truncated or incomplete NIfTI file"):
        read_image(bad)
    with pytest.raises(DataError, match=r"bad\.nii\.gz: truncated"):
        read_mask(bad)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"hello")
    with pytest.raises(DataError, match=r"junk\.nii\.gz: (truncated|unreadable)"):
        read_image(junk)


def test_nan_volume_is_reported(tmp_path: Path) -> None:
    a = np.ones((3, 3, 3), np.float32)
    a[0, 0, 0] = np.nan
    a[1, 1, 1] = np.inf
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 1 NaN and 1 inf value\(s\) out of 27"):
        read_image(_nifti(tmp_path / "nan.nii.gz", a))


def test_png_grey_rgb_and_conversion(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgb = np.stack([grey, grey + 1, grey + 2], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(np.concatenate([rgb, np.full((3, 4, 1), 255, np.uint8)], -1)).save(tmp_path / "a.png")
    g = read_image(tmp_path / "g.png")
    assert g.array.shape == (1, 3, 4) and g.spacing == (1.0, 1.0) and g.affine is None
    np.testing.assert_array_equal(g.array[0], grey)
    c = read_image(tmp_path / "c.png")
    assert c.array.shape == (3, 3, 4)
    np.testing.assert_array_equal(c.array[2], grey + 2)
    assert read_image(tmp_path / "a.png").array.shape == (3, 3, 4)  # alpha dropped
    assert read_image(tmp_path / "g.png", channels=3).array.shape == (3, 3, 4)
    assert read_image(tmp_path / "c.png", channels=1).array.shape == (1, 3, 4)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        read_image(tmp_path / "broken.png")


def test_truncated_png(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    raw = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"t\.png: unreadable"):
        read_image(tmp_path / "t.png")


def test_read_mask_types(tmp_path: Path) -> None:
    m = np.zeros((4, 3, 2), np.float32)
    m[1, 1, 1] = 2.0
    vol = read_mask(_nifti(tmp_path / "m.nii.gz", m))
    assert vol.array.dtype == np.int32 and vol.array[1, 1, 1] == 2
    m[0, 0, 0] = 0.5
    with pytest.raises(DataError, match=r"m2\.nii\.gz: mask holds non-integer values \(0\.5\)"):
        read_mask(_nifti(tmp_path / "m2.nii.gz", m))
    u8 = read_mask(_nifti(tmp_path / "u.nii.gz", np.ones((2, 2, 2), np.uint8)))
    assert u8.array.dtype == np.uint8
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png: colour mask"):
        read_mask(tmp_path / "colour.png")
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "bits.png").array, np.eye(4))


def test_write_mask_nifti_keeps_geometry(tmp_path: Path) -> None:
    img_path = _nifti(tmp_path / "img.nii.gz", np.random.default_rng(0).random((4, 3, 2)).astype(np.float32))
    like = read_image(img_path)
    like.header.set_qform(AFFINE, code=1)
    mask = np.zeros((4, 3, 2), np.int64)
    mask[1:3, 1, :] = 3
    out = tmp_path / "sub" / "pred.nii.gz"
    write_mask(out, mask, like)
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_allclose(back.affine, AFFINE)
    assert back.header.get_zooms() == pytest.approx((0.8, 0.8, 3.0))
    assert int(back.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), mask)
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.nii.gz"]  # no temporary file left
    big = mask.copy()
    big[0, 0, 0] = 1000
    write_mask(tmp_path / "big.nii.gz", big, like)
    assert nib.load(str(tmp_path / "big.nii.gz")).get_data_dtype() == np.int16
    with pytest.raises(DataError, match=r"bad\.nii\.gz: mask shape \(4, 3\) differs"):
        write_mask(tmp_path / "bad.nii.gz", mask[:, :, 0], like)


def test_write_mask_png(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "img.png")
    like = read_image(tmp_path / "img.png")
    mask = np.zeros((3, 5), np.int64)
    mask[1, 2] = 2
    write_mask(tmp_path / "m.png", mask, like)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png").array, mask)
    with pytest.raises(DataError, match="JPEG is lossy"):
        write_mask(tmp_path / "m.jpg", mask, like)
    mask[0, 0] = 300
    with pytest.raises(DataError, match="do not fit an 8-bit"):
        write_mask(tmp_path / "m2.png", mask, like)
