"""Pairing images, channel files and masks of a site folder (names only, nothing decoded)."""

from __future__ import annotations

from pathlib import Path

from fake_datasets import write_nifti_case, write_png_case
from fedseg.config import DataConfig
from fedseg.data.layout import index_dataset, infer_channels, infer_spatial_dims


def _index(root: Path, **kw: object) -> tuple[list[str], list[str], list[str]]:
    sites, _, problems = index_dataset(DataConfig(source="folder", root=root, **kw))  # type: ignore[arg-type]
    cases = [f"{c.site}/{c.case_id}:{len(c.images)}" for s in sites for c in s.cases]
    errors = [str(p) for p in problems if p.severity == "error"]
    warnings = [str(p) for p in problems if p.severity == "warning"]
    return cases, errors, warnings


def test_channel_files_and_single_files(tmp_path: Path) -> None:
    write_nifti_case(tmp_path / "S", "a", channels=2)
    write_nifti_case(tmp_path / "S", "b_0001", channels=2)  # a case whose own name ends in _0001
    cases, errors, _ = _index(tmp_path, channels=2)
    assert cases == ["S/a:2", "S/b_0001:2"] and not errors
    assert infer_spatial_dims(tmp_path, ["S"]) == 3 and infer_channels(tmp_path, ["S"]) == 2
    write_nifti_case(tmp_path / "T", "c", channels=1)
    (tmp_path / "T" / "images" / "c_0000.nii.gz").rename(tmp_path / "T" / "images" / "c.nii.gz")
    cases, _, _ = _index(tmp_path, channels=1, sites=["T"])
    assert cases == ["T/c:1"]


def test_structural_problems(tmp_path: Path) -> None:
    site = tmp_path / "S"
    write_png_case(site, "a")
    write_png_case(site, "b")
    (site / "images" / "b.jpg").write_bytes((site / "images" / "b.png").read_bytes())  # duplicated stem
    write_png_case(site, "orphan")
    (site / "images" / "orphan.png").unlink()  # mask without image
    (site / "images" / "notes.txt").write_text("x")
    (site / "images" / ".DS_Store").write_text("x")
    (tmp_path / "NoMasks" / "images").mkdir(parents=True)
    write_png_case(tmp_path / "NoMasksTmp", "x")
    (tmp_path / "NoMasksTmp" / "images" / "x.png").rename(tmp_path / "NoMasks" / "images" / "x.png")
    cases, errors, warnings = _index(tmp_path, sites=["S", "NoMasks", "Missing"])
    assert "S/a:1" in cases
    text = "\n".join(errors)
    assert "several files share the stem 'b': b.jpg, b.png" in text
    assert f"{tmp_path / 'NoMasks'}: no masks/ folder" in text
    assert "image without mask" in text and "x.png" in text
    assert "data.sites" in text and "Missing is not a directory" in text
    assert any("mask(s) without image: orphan" in w for w in warnings)
    assert any("notes.txt" in w for w in warnings) and not any(".DS_Store" in w for w in warnings)


def test_wrong_file_kind_for_the_dataset(tmp_path: Path) -> None:
    write_png_case(tmp_path / "S", "a")
    write_nifti_case(tmp_path / "S", "v", channels=1)
    _, errors, _ = _index(tmp_path, spatial_dims=2)
    assert any("another kind than the dataset's PNG/JPG/BMP (2D)" in e and "v_0000.nii.gz" in e for e in errors)
