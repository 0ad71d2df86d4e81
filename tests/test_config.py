from __future__ import annotations

from pathlib import Path

import pytest

from fedseg.config import ConfigError, config_from_dict, load_config


def test_unknown_key_names_the_key_and_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'federation\.roundz'.*rounds.*Did you mean 'rounds'"):
        config_from_dict({"federation": {"roundz": 3}})


def test_bad_value_names_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"'train\.optimizer'.*'rmsprop'"):
        config_from_dict({"train": {"optimizer": "rmsprop"}})


def test_overrides_and_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("federation:\n  rounds: 3\nalgorithm:\n  name: fedprox\n  mu: 0.1\n")
    cfg = load_config(path, ["federation.rounds=5", "algorithm.mu=0.5", "model.channels=[8,16]", "model.strides=[2]"])
    assert cfg.federation.rounds == 5 and cfg.algorithm["mu"] == 0.5 and cfg.model.channels == [8, 16]


def test_missing_file_and_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["rounds"])


def test_split_must_sum_to_one() -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        config_from_dict({"data": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}})
