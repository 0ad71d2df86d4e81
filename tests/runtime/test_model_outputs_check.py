"""Algorithms that need auxiliary outputs (FedBCS, FPL, FedProto) are refused on a model that does
not offer them before any directory is made or data read, on both engines (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.config import ConfigError, config_from_dict
from fedseg.runtime.model_init import check_model_outputs
from fedseg.runtime.flower.server_app import check_flower_config
from fedseg.runtime.sim import run_inprocess


@pytest.mark.parametrize("name", ["fedbcs", "fpl", "fedproto"])
def test_prototype_algorithms_on_a_plain_unet_are_refused_before_the_run_dir(tmp_path: Path, name: str) -> None:
    raw = tiny_config(name)
    raw["model"] = {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2]}
    cfg = config_from_dict(raw)
    with pytest.raises(ConfigError, match=rf"algorithm.name '{name}' .* model.name 'unet'.*offers: none"):
        run_inprocess(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="model.name 'unet'"):
        check_flower_config(cfg)


def test_models_that_offer_the_outputs_pass() -> None:
    for name in ("fedbcs", "fpl", "fedavg"):
        cfg = config_from_dict(tiny_config(name))
        check_model_outputs(cfg, build_algorithm(cfg.algorithm))
    raw = tiny_config("fedbcs")
    raw["algorithm"]["levels"] = []  # no prototypes: any model will do
    raw["model"] = {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2]}
    cfg = config_from_dict(raw)
    check_model_outputs(cfg, build_algorithm(cfg.algorithm))
