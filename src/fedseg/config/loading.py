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

__all__ = ["config_from_dict", "apply_overrides", "load_config"]


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


def _format_errors(err: ValidationError, raw: Any) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, int) or True)
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(RunConfig, loc, raw)
            hint = suggest(str(loc[-1]), allowed) or _belongs_to(str(loc[-1]), loc)
            lines.append(f"unknown key '{key}'; allowed here: {', '.join(allowed)}.{hint}")
        else:
            value = e.get("input")
            lines.append(f"'{key}': {e['msg']} (got {value!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Validate a plain mapping into a :class:`RunConfig` or raise :class:`ConfigError`."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, raw)) from None


def _parse_value(text: str) -> Any:
    """Parse a ``--set`` value with YAML rules (numbers, bools, lists)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config mapping (returns a new mapping)."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. federation.rounds=5")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: '{part}' is a value, not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return out


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML at ``path`` (or defaults when None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)
