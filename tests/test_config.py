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


# ------------------------------------------------------------------------------------ typed model configs
REPO = Path(__file__).resolve().parents[1]


def test_transformer_field_on_unet_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'model\.heads'; allowed here: channels, dropout, "
                                          r"init_checkpoint, name, norm, num_res_units, strides\. 'heads' is a field "
                                          r"of model 'transunet'"):
        config_from_dict({"model": {"channels": [8, 16], "strides": [2], "heads": 2}})


def test_unet_field_typo_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'model\.num_res_unit'.*Did you mean 'num_res_units'\?"):
        config_from_dict({"model": {"name": "unet", "num_res_unit": 0}})


def test_unknown_model_name_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"'model\.name': unknown model 'transunt'; allowed: [a-z_, ]*\btransunet, unet\b[a-z_, ]*\. "
                                          r"Did you mean 'transunet'\?"):
        config_from_dict({"model": {"name": "transunt"}})


def test_model_name_selects_the_typed_config_and_its_arguments() -> None:
    from fedseg.config import MODEL_CONFIGS, TransUNetConfig, UNetConfig
    from fedseg.models import MODELS

    assert MODEL_CONFIGS.names() == MODELS.names()
    assert type(config_from_dict({}).model) is UNetConfig
    cfg = config_from_dict({"model": {"name": "transunet", "heads": 2, "init_checkpoint": "w.pt"}}).model
    assert type(cfg) is TransUNetConfig and cfg.heads == 2
    assert cfg.arguments() == {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1,
                               "norm": "batch", "dropout": 0.0, "heads": 2, "transformer_layers": 1,
                               "mlp_ratio": 2.0, "pos_embed": "learned", "pos_grid": 8}
    with pytest.raises(ConfigError, match=r"'model\.heads'.*greater than or equal to 1"):
        config_from_dict({"model": {"name": "transunet", "heads": 0}})


def test_dumped_config_reloads_with_the_same_model(tmp_path: Path) -> None:
    """config.yaml of a run (``model_dump(mode="json")``) keeps the subclass fields and reloads."""
    import yaml

    cfg = config_from_dict({"model": {"name": "transunet", "heads": 2, "pos_embed": "none"}})
    dumped = cfg.model_dump(mode="json")
    assert dumped["model"]["heads"] == 2 and "heads" not in config_from_dict({}).model_dump()["model"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dumped))
    assert load_config(path) == cfg


def test_legacy_full_dump_of_a_unet_still_loads() -> None:
    """config.yaml files written before per-model configs hold every transformer field for a unet."""
    legacy = {"name": "unet", "heads": 4, "transformer_layers": 1, "mlp_ratio": 2.0, "pos_embed": "learned",
              "pos_grid": 8, "init_checkpoint": None}
    assert config_from_dict({"model": legacy}).model == config_from_dict({}).model


def test_defaults_of_recent_fields_are_kept() -> None:
    cfg = config_from_dict({})
    assert cfg.eval.select == "best_val" and cfg.train.optimizer_state == "auto"
    assert cfg.model.init_checkpoint is None and cfg.model.name == "unet"


PRESETS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "bench")  # bench: suites
"""Every run config shipped; ``configs/bench`` holds benchmark suites (tests/runtime/test_bench_suite.py)."""


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_seed_outside_numpys_range_is_refused(seed: int) -> None:
    with pytest.raises(ConfigError, match=r"^invalid config: 'seed': "):
        config_from_dict({"seed": seed})
    assert config_from_dict({"seed": 2**32 - 1}).seed == 2**32 - 1
    with pytest.raises(ConfigError, match=r"'data\.partition\.seed'"):
        config_from_dict({"data": {"partition": {"num_sites": 2, "seed": -3}}})


@pytest.mark.parametrize(("override", "message"), [
    ("federation.rounds=abc", r"^invalid config: 'federation\.rounds': .*integer.*\(got 'abc'\)$"),
    ("foo", r"^--set 'foo': expected key=value"),
    ("=3", r"^--set '=3': empty key"),
    ("federation..rounds=2", r"^--set 'federation\.\.rounds=2': empty key"),
    ("federation.roundz=3", r"^invalid config: unknown key 'federation\.roundz'.*Did you mean 'rounds'\?$"),
    ("codec.up=[{name: topk, ratio: 2}", r"^--set codec\.up=\[\{name: topk, ratio: 2\}: the value is not valid YAML "
                                         r"\(.*line 1, column \d+\)"),
    ("name.x=1", r"^invalid config: 'name': Input should be a valid string \(got \{'x': 1\}\)$"),
    ("codec.up=[int8]", r"^invalid config: 'codec\.up\[0\]': .*dictionary \(got 'int8'\)$"),
    ("seed=!!python/object:os.system ls", r"^--set seed=.*not valid YAML"),
])
def test_a_malformed_override_is_one_line_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_an_empty_yaml_section_takes_overrides_and_several_problems_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("codec:\nfederation:\n  rounds: 2\n")
    assert load_config(path, ["codec.error_feedback=false"]).codec.error_feedback is False
    with pytest.raises(ConfigError) as info:
        load_config(path, ["federation.rounds=x", "seed=-1"])
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid config:" and len(lines) == 3
    assert {line.split(":")[0].strip() for line in lines[1:]} == {"'seed'", "'federation.rounds'"}
    with pytest.raises(ConfigError, match=r"^--set name\.x: 'name' is a value \('run'\), not a section$"):
        load_config(path, ["name=run", "name.x=1"])


def test_unreadable_or_non_mapping_files_are_config_errors(tmp_path: Path) -> None:
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(binary)
    listed = tmp_path / "l.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listed)
    broken = tmp_path / "y.yaml"
    broken.write_text("federation: {rounds: 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: .* at line \d+, column \d+$"):
        load_config(broken)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(("chain", "message"), [
    ({"up": [{"name": "topkk"}]}, r"codec\.up\[0\]\.name: got 'topkk'.*Did you mean 'topk'"),
    ({"up": [{"name": "topk", "ratio": 2}]}, r"codec\.up\[0\]: .*ratio must be in \(0, 1\]"),
    ({"up": [{"name": "int8", "bits": 3}]}, r"codec\.up\[0\]\.bits"),
    ({"up": [{"name": "int8"}, {"name": "topk"}]}, r"codec\.up: the sparsifier must come first"),
    ({"down": [{"name": "topk"}]}, r"codec\.down got \['topk'\]"),
    ({"up": [{"ratio": 0.1}]}, r"codec\.up\[0\]\.name: got None"),
])
def test_codec_chains_are_checked_from_the_config_alone(chain: dict[str, object], message: str) -> None:
    from fedseg.codecs import check_codec_config

    cfg = config_from_dict({"codec": chain, "data": {"source": "folder", "root": "/nonexistent"}})
    with pytest.raises(ConfigError, match=message):
        check_codec_config(cfg.codec)
    assert check_codec_config(config_from_dict({"codec": {"up": [{"name": "topk", "ratio": 0.1}, {"name": "int8"}]}}
                                               ).codec).up.active


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_floats_must_be_finite(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^invalid config: 'train\.lr': Input should be a finite number"):
        config_from_dict({"train": {"lr": value}})
    with pytest.raises(ConfigError, match=r"'privacy\.client\.noise_multiplier'"):
        load_config(None, ["privacy.client.noise_multiplier=.nan"])


@pytest.mark.parametrize("name", ["", "../x", "a/b", "..", "a\\b"])
def test_the_run_name_is_a_plain_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid config: 'name': .*plain name"):
        config_from_dict({"name": name})
