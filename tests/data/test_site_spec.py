"""Per-site data specs: the two spellings, the refusals (site and key named), channel selection,
per-site label maps, site folders elsewhere, and cache keys that follow the spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fake_datasets import write_nifti_case, write_png_case
from fedseg.config import ConfigError, DataConfig, config_from_dict
from fedseg.data.base import DataError
from fedseg.data.folder import check_dataset, load_folder_federation
from fedseg.data.site_spec import site_config


def _cfg(root: Path, **kw: Any) -> DataConfig:
    return DataConfig(source="folder", root=root, **kw)


def _all_images(fd: Any, site: str) -> np.ndarray:
    s = fd.site(site)
    return np.concatenate([s.train.images.numpy(), s.val.images.numpy(), s.test.images.numpy()])


def test_entries_move_to_site_specs_and_round_trip(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, sites=["us", {"name": "derm", "channels": "grey", "label_map": {0: 0, 255: 1}},
                                {"name": "brain", "channels": [1], "slice_axis": 2, "modality": "MR"}])
    assert cfg.sites == ["us", "derm", "brain"]
    assert set(cfg.site_specs) == {"derm", "brain"} and cfg.site_spec("us") is None
    assert cfg.site_specs["brain"].channels == [1] and cfg.site_specs["derm"].channels == "grey"
    again = DataConfig.model_validate(cfg.model_dump(mode="json"))  # a saved config reads back the same
    assert again == cfg
    same = _cfg(tmp_path, sites=["us", "derm"], site_specs={"derm": {"channels": "grey", "label_map": {0: 0, 255: 1}}})
    assert same.site_specs["derm"] == cfg.site_specs["derm"]


def test_group_column_and_preprocess_per_site(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, image_size=[16, 16], group_column="case", preprocess={"normalize": "zscore"},
               sites=["a", {"name": "b", "group_column": "patient", "preprocess": {"normalize": "none"}}])
    assert cfg.group_column_of("a") == "case" and cfg.group_column_of("b") == "patient"
    b = site_config(cfg, "b")
    assert b.preprocess.normalize == "none" and b.target_shape() == [16, 16]  # the federation's shape stays
    assert site_config(cfg, "a") is cfg
    sliced = site_config(cfg, "a", sliced=True)  # volumes: no 2D target before slicing
    assert sliced.target_shape() is None and sliced.spatial_dims == 3 and sliced.preprocess.normalize == "zscore"


@pytest.mark.parametrize(("data", "message"), [
    ({"channels": 1, "sites": [{"name": "derm", "channels": [0, 1]}]},
     r"data.sites\[derm\].channels = \[0, 1\] gives 2 input channel\(s\), but data.channels is 1"),
    ({"channels": 2, "sites": [{"name": "us", "channels": "grey"}]}, r"data.sites\[us\].channels"),
    ({"num_classes": 3, "sites": [{"name": "derm", "label_map": {0: 0, 255: 1}}]},
     r"data.sites\[derm\].label_map reaches classes \[0, 1\] .* never label class\(es\) \[2\]"),
    ({"sites": [{"name": "derm", "label_map": {0: 0, 255: 2}}]}, r"data.sites\[derm\].label_map targets \[2\]"),
    ({"sites": [{"name": "d", "channels": [0, 0]}]}, r"data.sites\[d\].channels .* distinct"),
    ({"spatial_dims": 2, "sites": [{"name": "brain", "spatial_dims": 3}]}, r"data.sites\[brain\].slice_axis"),
    ({"spatial_dims": 3, "slice_axis": 2}, "data.spatial_dims is 3"),
    ({"slice_keep_empty": 0.1}, "data.slice_keep_empty needs slicing"),
    ({"sites": [{"name": "b", "slice_axis": 1, "preprocess": {"target_shape": [8, 8]}}]},
     r"data.sites\[b\].preprocess.target_shape .* 3 values"),
    ({"sites": ["a"], "site_specs": {"b": {"modality": "MR"}}}, r"site\(s\) \['b'\] that data.sites leaves out"),
    ({"sites": [{"channels": [0]}]}, r"data.sites\[0\] is a site entry without a 'name'"),
    ({"sites": [{"name": "a"}], "site_specs": {"a": {}}}, "give its spec once"),
])
def test_specs_that_cannot_reach_the_common_input_are_refused(tmp_path: Path, data: dict[str, Any],
                                                              message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cfg(tmp_path, **data)


def test_refused_through_the_run_config_naming_site_and_key(tmp_path: Path) -> None:
    from conftest import tiny_config

    raw = tiny_config(data={"source": "folder", "root": str(tmp_path), "num_classes": 2,
                            "sites": [{"name": "derm", "channels": [0, 2]}]})
    with pytest.raises(ConfigError, match=r"data.sites\[derm\].channels"):
        config_from_dict(raw)
    synthetic = tiny_config(data={"site_specs": {"site0": {"modality": "MR"}}})
    with pytest.raises(ConfigError, match="need real data"):
        config_from_dict(synthetic)


def test_rgb_channel_selection_grey_luminance_and_label_map(tmp_path: Path) -> None:
    for i in range(3):
        write_png_case(tmp_path / "red", f"r{i}", rgb=True, seed=i)
        write_png_case(tmp_path / "grey", f"g{i}", rgb=True, label=255, seed=i)
    raw = {"normalize": "none"}
    cfg = _cfg(tmp_path, channels=1, preprocess=raw, sites=[
        {"name": "red", "channels": [0]},
        {"name": "grey", "channels": "grey", "label_map": {0: 0, 255: 1}}])
    fd = load_folder_federation(cfg, seed=0)
    assert fd.in_channels == 1
    expected_red = {f"r{i}": np.asarray(Image.open(tmp_path / "red" / "images" / f"r{i}.png"))[..., 0] for i in range(3)}
    expected_grey = {f"g{i}": np.asarray(Image.open(tmp_path / "grey" / "images" / f"g{i}.png").convert("L"))
                     for i in range(3)}
    for name, expected in (("red", expected_red), ("grey", expected_grey)):
        s = fd.site(name)
        for split in (s.train, s.val, s.test):
            for case_id, image, mask in zip(split.ids, split.images, split.masks):
                np.testing.assert_array_equal(image[0].numpy(), expected[case_id].astype(np.float32))
                assert set(mask.unique().tolist()) == {0, 1}  # grey: 255 mapped to class 1
    # without its label map the 0/255 site is refused, naming the mask
    bad = _cfg(tmp_path, channels=1, sites=["grey"])
    report = check_dataset(bad)
    assert report.errors and all("mask values 255" in p.message for p in report.errors)


def test_volume_channel_files_selected_never_open_the_others(tmp_path: Path) -> None:
    for i in range(3):
        write_nifti_case(tmp_path / "mr", f"c{i}", channels=3, seed=i)
    # channel file _0000 is unreadable: selecting [2] must not open it
    for i in range(3):
        (tmp_path / "mr" / "images" / f"c{i}_0000.nii.gz").write_bytes(b"not a nifti file")
    cfg = _cfg(tmp_path, channels=1, preprocess={"normalize": "none"}, sites=[{"name": "mr", "channels": [2]}])
    fd = load_folder_federation(cfg, seed=0)
    s = fd.site("mr")
    for split in (s.train, s.val, s.test):
        for case_id, image in zip(split.ids, split.images):
            raw = np.asarray(nib.load(str(tmp_path / "mr" / "images" / f"{case_id}_0002.nii.gz")).get_fdata())
            np.testing.assert_allclose(image[0].numpy(), raw.astype(np.float32), rtol=0, atol=1e-5)
    # a selection beyond the case's channel files: refused at indexing, naming the site and the key
    too_far = check_dataset(_cfg(tmp_path, channels=1, sites=[{"name": "mr", "channels": [3]}]))
    assert too_far.errors and all(p.site == "mr" and "data.sites[mr].channels selects [3]" in p.message
                                  for p in too_far.errors)


def test_volume_site_in_2d_federation_without_slice_axis_is_refused(tmp_path: Path) -> None:
    write_png_case(tmp_path / "us", "u0")
    write_nifti_case(tmp_path / "mr", "c0", channels=1)
    report = check_dataset(_cfg(tmp_path, spatial_dims=2, sites=["us", {"name": "mr", "channels": [0]}]))
    assert [p.site for p in report.errors] == ["mr"]
    assert "data.sites[mr].slice_axis" in report.errors[0].message
    with pytest.raises(DataError, match=r"data.sites\[mr\].slice_axis"):
        load_folder_federation(_cfg(tmp_path, spatial_dims=2, sites=["us", {"name": "mr", "channels": [0]}]), seed=0)


def test_site_folder_elsewhere(tmp_path: Path) -> None:
    for i in range(3):
        write_png_case(tmp_path / "busbra" / "scanner", f"b{i}", size=(16, 16), seed=i)
        write_png_case(tmp_path / "ph2" / "PH2", f"p{i}", size=(16, 16), rgb=True, seed=i)
    cfg = _cfg(tmp_path, sites=[{"name": "us", "path": "busbra/scanner"},
                                {"name": "skin", "path": str(tmp_path / "ph2" / "PH2"), "channels": "grey"}])
    report = check_dataset(cfg)
    assert not report.problems and [s.name for s in report.sites] == ["us", "skin"]
    assert "folder" in report.sites[1].spec and "channels grey" in report.sites[1].spec
    fd = load_folder_federation(cfg, seed=0)
    assert [s.name for s in fd.sites] == ["us", "skin"] and fd.site("skin").train.images.shape[1] == 1


def test_cache_key_follows_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    for i in range(3):
        write_png_case(tmp_path / "data" / "rgb", f"r{i}", rgb=True, seed=i)
    root = tmp_path / "data"
    first = {c: _all_images(load_folder_federation(_cfg(root, sites=[{"name": "rgb", "channels": [c]}]), 0), "rgb")
             for c in (0, 1)}
    warm = {c: _all_images(load_folder_federation(_cfg(root, sites=[{"name": "rgb", "channels": [c]}]), 0), "rgb")
            for c in (0, 1)}
    assert not np.array_equal(first[0], first[1])  # a warm cache does not hand channel 0 to the [1] spec
    for c in (0, 1):
        np.testing.assert_array_equal(first[c], warm[c])


def test_cross_modality_example_config_validates_and_indexes() -> None:
    from conftest import SHARED_DATA
    from fedseg.config import load_config
    from fedseg.data.layout import index_dataset

    repo = Path(__file__).resolve().parents[2]
    data = load_config(repo / "configs" / "examples" / "cross_modality.yaml").data
    assert data.sites == ["brain_mr", "breast_us", "skin_rgb"] and data.channels == 1
    assert data.site_specs["brain_mr"].slice_axis == 2 and data.site_specs["skin_rgb"].channels == "grey"
    root = repo / str(data.root)
    if not (Path(SHARED_DATA).is_dir() and root.is_dir()):
        pytest.skip(f"{root} not available")
    sites, dims, problems = index_dataset(data.model_copy(update={"root": root}))  # names only: milliseconds
    assert dims == 2 and not [p for p in problems if p.severity == "error"]
    assert {s.name: (len(s.cases), s.slice_axis) for s in sites} == {
        "brain_mr": (40, 2), "breast_us": (25, None), "skin_rgb": (200, None)}
