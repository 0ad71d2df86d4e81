"""The dataset spec (``DataConfig`` and its sub-models): old keys keep working, bad values are named."""

from __future__ import annotations

import pytest

from fedseg.config import ConfigError, DataConfig, config_from_dict


def _bad(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from_dict({"data": data})


def test_legacy_keys_still_work() -> None:
    cfg = DataConfig(source="folder", root="x", image_size=[64, 48], channels=3, group_column="case",
                     pixel_spacing=[0.5, 0.5])
    assert cfg.target_shape() == [64, 48] and cfg.group_column_of("any") == "case"
    assert DataConfig().source == "synthetic" and DataConfig().cache


def test_group_column_per_site() -> None:
    cfg = DataConfig(source="folder", root="x", group_column={"CVC-ClinicDB": "sequence"})
    assert cfg.group_column_of("CVC-ClinicDB") == "sequence" and cfg.group_column_of("Kvasir-SEG") is None


def test_label_spec_is_checked() -> None:
    _bad({"num_classes": 3, "label_names": ["bg", "a"]}, "label_names has 2 names for num_classes=3")
    _bad({"num_classes": 2, "label_map": {0: 0, 4: 2}}, r"label_map targets \[2\] are not class indices")
    _bad({"channels": 2, "channel_names": ["FLAIR"]}, "channel_names has 1 names for 2 channel")


def test_preprocess_spec_is_checked() -> None:
    _bad({"preprocess": {"normalize": "ct"}}, "needs ct_window")
    _bad({"preprocess": {"target_spacing": [1, 1], "target_shape": [8, 8, 8]}}, "one value per spatial axis")
    _bad({"preprocess": {"target_spacing": [0, 1]}}, "positive mm values")
    _bad({"preprocess": {"orientation": "RAX"}}, "three axis codes")
    _bad({"image_size": [8, 8], "preprocess": {"target_shape": [4, 4]}}, "disagree")
    _bad({"preprocess": {"resample": True}}, "unknown key 'data.preprocess.resample'")
    assert DataConfig(preprocess={"orientation": "lps"}).preprocess.orientation == "LPS"


def test_partition_spec_is_checked() -> None:
    _bad({"source": "folder", "root": "x", "partition": {"num_sites": 2, "site_names": ["a"]}}, "2 distinct names")
    _bad({"partition": {"num_sites": 2}}, "apply to data.source 'folder' only")
    _bad({"source": "folder", "root": "x", "partition": {"method": "quantity"}}, "partition.method")
