"""DynUNet's layout by nnU-Net's rule, and its config errors (each names ``model.<key>``)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import tiny_config
from pydantic import ValidationError

from fedseg.config import ConfigError, config_from_dict
from fedseg.config.model import DynUNetConfig, typed_model_config
from fedseg.config.topology import pool_and_conv_props

_3 = [3, 3, 3]


# Expected values: nnU-Net v2's get_pool_and_conv_props (network_topology.py) with
# min_feature_map_size 4 run on the same inputs; each also follows by hand from the rule.
@pytest.mark.parametrize(("spacing", "patch", "cap", "pools", "kernels"), [
    # isotropic 2D: pool until the 4-pixel bottleneck (256 -> 4: 6 poolings)
    ([1.0, 1.0], [256, 256], None, [[2, 2]] * 6, [[3, 3]] * 7),
    # 512 -> 4 would take 7; the 2D cap is 6 (nnU-Net's planner passes no cap: 7)
    ([1.0, 1.0], [512, 512], None, [[2, 2]] * 6, [[3, 3]] * 7),
    ([1.0, 1.0], [512, 512], 999999, [[2, 2]] * 7, [[3, 3]] * 8),
    # anisotropic 3D (ACDC-like): z (5 mm) joins once x/y reach 3 mm, and stops at 5 voxels;
    # its kernel is 1 until its spacing is within 2x of the others
    ([5.0, 1.5, 1.5], [20, 192, 160], None, [[1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
     [[1, 3, 3], _3, _3, _3, _3, _3]),
    ([4.0, 1.0, 1.0], [16, 64, 64], None, [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
     [[1, 3, 3], [1, 3, 3], _3, _3, _3]),
    # a finer axis pools first; an axis of 8 voxels pools once more, to 4
    ([1.0, 0.5], [64, 96], None, [[1, 2], [2, 2], [2, 2], [2, 2]], [[1, 3], [3, 3], [3, 3], [3, 3], [3, 3]]),
    ([1.0, 1.0, 1.0], [16, 16, 8], None, [[2, 2, 2], [2, 2, 1]], [_3, _3, _3]),
])
def test_layout_follows_nnunet(spacing: list[float], patch: list[int], cap: int | None, pools: list[list[int]],
                               kernels: list[list[int]]) -> None:
    assert pool_and_conv_props(spacing, patch, max_pools=cap) == (pools, kernels)


def _run(model: dict[str, Any] | None = None, **sections: Any) -> Any:
    cfg = tiny_config(dims=3)
    cfg["model"] = {"name": "dynunet", **(model or {})}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return config_from_dict(cfg)


def test_the_run_config_derives_and_records_the_layout() -> None:
    cfg = _run(train={"patch_size": [16, 64, 64]}, data={"preprocess": {"target_spacing": [4.0, 1.0, 1.0]}})
    model = cfg.model
    assert isinstance(model, DynUNetConfig)
    assert model.pool_strides == [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert model.kernels == [[1, 3, 3], [1, 3, 3], _3, _3, _3]
    assert model.channels == [32, 64, 128, 256, 320] and model.strides == [2, 2, 2, 2]
    assert model.size_divisors(3) == [4, 16, 16]  # per axis, not the isotropic 16
    assert model.arguments()["deep_supr_num"] == 3  # every decoder level below full resolution
    again = config_from_dict(cfg.model_dump(mode="json"))  # config.yaml: the same network on reload
    assert again.model == model
    # without a patch, the data's target shape (isotropic without a target spacing)
    cfg = _run(data={"preprocess": {"target_shape": [16, 16, 16]}})
    assert cfg.model.pool_strides == [[2, 2, 2]] * 2


def test_per_axis_divisors_admit_an_anisotropic_patch() -> None:
    # 20 is not a multiple of 32 (2**5, the isotropic bound), but z is pooled twice only
    cfg = _run(train={"patch_size": [20, 192, 160]}, data={"preprocess": {"target_spacing": [5.0, 1.5, 1.5]}})
    assert cfg.model.size_divisors(3) == [4, 32, 32]
    with pytest.raises(ConfigError, match=r"train.patch_size \[18, 192, 160\].*multiple of \[4, 32, 32\]"):
        _run(model={"kernels": cfg.model.kernels, "pool_strides": cfg.model.pool_strides},
             train={"patch_size": [18, 192, 160]})


@pytest.mark.parametrize(("model", "key"), [
    ({"kernels": [[3, 3]] * 3}, "model.pool_strides"),
    ({"pool_strides": [[2, 2]] * 2}, "model.kernels"),
    ({"channels": [4, 8, 16]}, "model.channels"),
    ({"kernels": [[3, 3]] * 3, "pool_strides": [[2, 2]] * 2, "channels": [4, 8, 16]}, "model.channels"),
    ({"kernels": [[3, 3]] * 3, "pool_strides": [[2, 2]] * 3}, "model.pool_strides"),
    ({"kernels": [[3, 3]] * 3, "pool_strides": [[2, 2], [2, 2, 2]]}, "model.kernels"),
    ({"kernels": [[3, 2]] * 3, "pool_strides": [[2, 2]] * 2}, "model.kernels"),
    ({"kernels": [[3, 3]] * 3, "pool_strides": [[2, 2]] * 2, "filters": [4, 8]}, "model.filters"),
    ({"kernels": [[3, 3]] * 4, "pool_strides": [[2, 2]] * 3, "deep_supr_num": 3}, "model.deep_supr_num"),
    ({"norm": "batch"}, "norm"),
    ({"num_res_units": 1}, "num_res_units"),
    ({"heads": 4}, "heads"),
])
def test_model_errors_name_the_key(model: dict[str, Any], key: str) -> None:
    with pytest.raises(ValidationError) as err:
        typed_model_config({"name": "dynunet", **model})
    assert key in str(err.value)


@pytest.mark.parametrize(("sections", "key"), [
    ({}, "model.kernels"),  # synthetic data: neither a patch nor a target shape
    ({"train": {"patch_size": [8, 8, 8]}}, "model.kernels"),  # one pooling only; DynUNet needs two
    ({"train": {"patch_size": [16, 16, 16]}, "data": {"preprocess": {"target_spacing": [1.0, 1.0]}}},
     "model.kernels"),
])
def test_run_config_errors_name_the_key(sections: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _run(**sections)
