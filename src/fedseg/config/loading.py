"""Loading a run configuration: YAML files, ``--set`` overrides, and readable validation errors.

Every section rejects unknown keys; the error names the key and the allowed ones. Algorithm
hyperparameters are validated against the algorithm's own dataclass (see
:func:`fedseg.algorithms.build_algorithm`), so ``algorithm`` is a free mapping here; ``model``
is validated against the typed config its ``name`` selects (:mod:`fedseg.config.model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedseg.config.base import ConfigError
from fedseg.config.model import ModelConfig, model_config_class, owners_of
from fedseg.config.run import RunConfig
from fedseg.registry import UnknownNameError, suggest

__all__ = ["config_from_dict", "apply_overrides", "load_config", "read_raw_config"]


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...], raw: Any) -> list[str]:
    """Walk ``loc`` through nested pydantic models (and the matching part of the input ``raw``) and
    return the allowed keys there; in ``model`` the class its ``model.name`` selects."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
        raw = raw.get(part) if isinstance(raw, dict) else None
        if isinstance(current, type) and issubclass(current, ModelConfig):
            try:
                current = model_config_class(raw)
            except UnknownNameError:
                return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _belongs_to(key: str, loc: tuple[Any, ...]) -> str:
    """' 'heads' is a field of model 'transunet'.' for a model key that another model takes."""
    if len(loc) != 2 or loc[0] != "model":
        return ""
    owners = owners_of(key)
    return f" {key!r} is a field of model {', '.join(repr(o) for o in owners)}." if owners else ""


_SECTIONS = frozenset(name for name in RunConfig.model_fields if name not in ("name", "seed", "engine"))
"""Top-level keys that hold a section (a mapping)."""

_MAX_SHOWN = 80
"""Characters of a rejected value shown in an error message (a whole section would flood it)."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _format_errors(err: ValidationError, raw: Any) -> str:
    """One line per problem (one line in all when there is one), each naming its key."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(RunConfig, loc, raw)
            hint = suggest(str(loc[-1]), allowed) or _belongs_to(str(loc[-1]), loc)
            lines.append(f"unknown key '{key}'; allowed here: {', '.join(allowed)}.{hint}")
        else:
            message = str(e["msg"]).replace("\n", " ")
            lines.append(f"'{key}': {message} (got {_shown(e.get('input'))})")
    if len(lines) == 1:
        return f"invalid config: {lines[0]}"
    return "invalid config:\n  " + "\n  ".join(lines)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Validate a plain mapping into a :class:`RunConfig` or raise :class:`ConfigError`.

    Raises:
        ConfigError: ``raw`` is not a mapping, or a key or value is invalid (every problem is
            listed, each naming its dotted key).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, raw)) from None
    except (TypeError, ValueError, KeyError) as err:  # a validator that met a value of an unexpected type
        raise ConfigError(f"invalid config: {err}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what went wrong and where (``line L, column C``)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _parse_value(key: str, text: str) -> Any:
    """Parse a ``--set`` value with YAML rules (numbers, bools, lists, mappings).

    Raises:
        ConfigError: the value is not valid YAML (the message names the key).
    """
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}={text}: the value is not valid YAML ({_yaml_problem(exc)}); quote a "
                          "string, write a list as [a, b] and a mapping as {k: v}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config mapping (returns a new mapping).

    Values are parsed as YAML. Keys are not checked here (the validation that follows names an
    unknown key with the allowed ones); the form of each override is.

    Raises:
        ConfigError: an override without ``=``, with an empty key or key part, a value that is
            not valid YAML, or a key that descends into a value (``name.x`` when ``name`` is a
            string); the message quotes the override.
    """
    import copy

    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config: the top level must be a mapping of sections, got {type(raw).__name__}")
    out = copy.deepcopy(raw)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. federation.rounds=5")
        key, value = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p.strip() for p in parts):
            raise ConfigError(f"--set {item!r}: empty key or key part; expected a dotted key such as "
                              "federation.rounds=5")
        parts = [p.strip() for p in parts]
        node = out
        for depth, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if nxt is None:  # an empty section in YAML (`codec:`) is an empty mapping
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {key}: '{where}' is a value ({_shown(nxt)}), not a section")
            node = nxt
        node[parts[-1]] = _parse_value(key, value)
    return out


def read_raw_config(path: Path | None) -> dict[str, Any]:
    """The raw mapping of the YAML config at ``path`` ({} when None), not yet validated.

    Raises:
        ConfigError: the file is missing, unreadable or not a YAML mapping (names the file).
    """
    if path is None:
        return {}
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({type(exc).__name__}: {exc})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    # a section whose keys are all commented out (`codec:`) is YAML null: it means the defaults
    return {k: {} if v is None and k in _SECTIONS else v for k, v in loaded.items()}


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML at ``path`` (or defaults when None), apply overrides, validate.

    Raises:
        ConfigError: the file is missing, unreadable or not a YAML mapping, an override is
            malformed, or the result does not validate (see :func:`config_from_dict`).
    """
    return config_from_dict(apply_overrides(read_raw_config(path), overrides or []))
