"""Fuzzing config loading (hypothesis): any input gives a config or a named fedseg error.

Random nested mappings built from the real key set (every dotted key of :class:`RunConfig`, with
values of every JSON/YAML kind), random ``--set`` strings, random YAML text, random codec chains
and algorithm sections: ``config_from_dict`` / ``apply_overrides`` / ``load_config`` /
``check_codec_config`` / ``build_algorithm`` return a result or raise :class:`ConfigError` (or the
algorithm's own named errors), never another exception from deep inside, and every message names
something (is not empty). ``derandomize=True`` keeps CI reproducible.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fedseg.algorithms import ALGORITHMS, AlgorithmConfigError, build_algorithm
from fedseg.codecs import CODECS, check_codec_config
from fedseg.config import MODEL_CONFIGS, ConfigError, RunConfig, apply_overrides, config_from_dict, load_config
from fedseg.registry import UnknownNameError

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _model_type(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``), if any."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + name)
        sub = _model_type(field.annotation)
        if sub is not None:
            out += _keys(sub, f"{prefix}{name}.")
    return out


KEYS = sorted({*_keys(RunConfig), *(f"model.{k}" for m in MODEL_CONFIGS.names()
                                    for k in MODEL_CONFIGS.get(m).model_fields)})
NAMES = [*ALGORITHMS.names(), *CODECS.names(), *MODEL_CONFIGS.names(), "folder", "synthetic", "auto", "best"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(NAMES),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS).map(lambda k: k.rsplit(".", 1)[-1]),
                                                      st.text(max_size=6)), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def nested_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A mapping with real dotted keys (a few random ones) set to random values."""
    raw: dict[str, Any] = {}
    for key in draw(st.lists(st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=8)), max_size=6)):
        node: Any = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = draw(values)
    return raw


def _named(exc: Exception) -> None:
    assert str(exc).strip(), f"{type(exc).__name__} without a message"


@FUZZ
@given(nested_configs())
def test_random_nested_configs_validate_or_raise_config_error(raw: dict[str, Any]) -> None:
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        _named(exc)
        return
    assert isinstance(cfg, RunConfig)
    assert 0 <= cfg.seed < 2**32
    assert config_from_dict(cfg.model_dump(mode="json")) == cfg  # a valid config round-trips


@FUZZ
@given(st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(max_size=20)),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.sampled_from(
        ["abc", "-1", "1e400", "[1, 2", "{a", "[]", "{}", "null", "!!python/object:os.system x", "'", "nan", "~",
         "[{name: topk, ratio: 2}]", "2**32", "&a [*a]", "*undefined"])),
), max_size=4))
def test_random_overrides_apply_or_raise_config_error(overrides: list[str]) -> None:
    try:
        raw = apply_overrides({"federation": {"rounds": 2}, "name": "x"}, overrides)
        config_from_dict(raw)
    except ConfigError as exc:
        _named(exc)


@FUZZ
@given(st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.builds(lambda k, v: f"{k.split('.')[0]}:\n  {k.split('.')[-1]}: {v}\n", st.sampled_from(KEYS),
              st.text(max_size=20)),
))
def test_random_yaml_files_load_or_raise_config_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_config(path)
    except ConfigError as exc:
        _named(exc)


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(["name", "ratio", "per_channel", "min_numel", "bits", "seed", "x"]),
                                st.one_of(scalars, st.sampled_from(CODECS.names())), max_size=3), max_size=3),
       st.lists(st.fixed_dictionaries({"name": st.sampled_from(CODECS.names())}), max_size=2))
def test_random_codec_chains_build_or_raise_config_error(up: list[dict[str, Any]], down: list[dict[str, Any]]) -> None:
    try:
        cfg = config_from_dict({"codec": {"up": up, "down": down}})
        check_codec_config(cfg.codec)
    except ConfigError as exc:
        _named(exc)


@FUZZ
@given(st.sampled_from(ALGORITHMS.names()), st.dictionaries(
    st.sampled_from(["mu", "lam", "beta", "lambda_", "head", "threshold", "epochs", "x", "name"]), scalars, max_size=3))
def test_random_algorithm_sections_build_or_raise_a_named_error(name: str, params: dict[str, Any]) -> None:
    try:
        assert build_algorithm({"name": name, **params}).name == name
    except (AlgorithmConfigError, UnknownNameError) as exc:
        _named(exc)


def test_the_fuzzed_key_set_is_the_real_one() -> None:
    assert {"seed", "federation.rounds", "codec.up", "data.partition.seed", "model.channels"} <= set(KEYS)
    assert len(KEYS) > 100
