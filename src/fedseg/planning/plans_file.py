"""``plans.yaml``: writing a plan, and reading it back under a run's config.

Precedence, lowest first: fedseg's defaults < the plan's ``overrides`` < the config file < ``--set``.
The config file and ``--set`` override the plan key by key (a nested merge). One exception keeps
the result valid: the plan's ``model`` section plans ``model.name: dynunet``; when the config file
(or ``--set model.name=...``) names another model, or sets a U-Net layout (``channels`` or
``strides``) without a name (fedseg's default model is ``unet``), the plan's model keys are
dropped as a whole (a U-Net has no ``kernels``), and a warning says so. A ``model`` section
without a name and without those keys refines the plan's model (e.g. ``model.filters``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml

from fedseg.config import RunConfig, config_from_dict
from fedseg.config.loading import apply_overrides, read_raw_config
from fedseg.io.atomic import atomic_write_text
from fedseg.planning.fingerprint import PlanError
from fedseg.planning.planner import Plan

__all__ = ["PLANS_VERSION", "plan_to_yaml", "write_plans", "read_plan_overrides", "merge_under", "load_planned_config"]

PLANS_VERSION = 1
log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """Numpy scalars and tuples as plain YAML values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


class _Dumper(yaml.SafeDumper):
    """Short lists of numbers on one line (``[2.0, 2.0, 2.0]``), the rest in block style."""


def _list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flat = all(not isinstance(v, (dict, list)) or (isinstance(v, list) and
                                                      all(not isinstance(w, (dict, list)) for w in v)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat and len(data) <= 16)


_Dumper.add_representer(list, _list)


def plan_to_yaml(plan: Plan, sites: list[str], source: str) -> str:
    """The readable plans file: header, overrides, every decision with its rule, all configurations."""
    doc = {
        "fedseg_plans": PLANS_VERSION,
        "source": source,
        "sites": sites,
        "configuration": plan.configuration,
        "overrides": _plain(plan.overrides),
        "decisions": [{"key": d.key, "value": _plain(d.value), "rule": d.rule} for d in plan.decisions],
        "fingerprint_summary": _plain(plan.summary),
        "configurations": _plain(plan.configurations),
    }
    head = ("# fedseg plans (docs/planning.md): `fedseg run CONFIG --plans THIS` applies `overrides`;\n"
            "# the config file and --set override them key by key.\n")
    return head + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=110)


def write_plans(path: Path, plan: Plan, sites: list[str], source: str) -> Path:
    """Write ``plans.yaml`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, plan_to_yaml(plan, sites, source))
    return path


def read_plan_overrides(path: Path) -> dict[str, Any]:
    """The ``overrides`` mapping of a plans file.

    Raises:
        PlanError: missing, unreadable, not YAML, or without an ``overrides`` mapping (names the file).
    """
    if not path.is_file():
        raise PlanError(f"--plans {path}: no such file (write one with `fedseg plan CONFIG --out {path}`)")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PlanError(f"--plans {path}: cannot read the plans ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("overrides"), dict):
        raise PlanError(f"--plans {path}: not a fedseg plans file (expected a mapping with 'overrides'; write one "
                        "with `fedseg plan`)")
    if doc.get("fedseg_plans") != PLANS_VERSION:
        raise PlanError(f"--plans {path}: fedseg_plans version {doc.get('fedseg_plans')!r}; this fedseg reads "
                        f"version {PLANS_VERSION}")
    return dict(doc["overrides"])


def merge_under(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, nested mappings merged key by key (a new mapping)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_under(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _model_name(raw: dict[str, Any], default: str | None) -> str | None:
    """The model a raw config names: its ``model.name``; without one, ``unet`` (fedseg's default) when
    the section sets a U-Net layout (``channels``/``strides``), else ``default``."""
    model = raw.get("model")
    if not isinstance(model, dict):
        return None
    if "name" in model:
        return str(model["name"])
    return "unet" if {"channels", "strides"} & set(model) else default


def load_planned_config(config_path: Path | None, plans_path: Path, overrides: list[str]) -> RunConfig:
    """The run config of ``fedseg run CONFIG --plans PLANS --set ...`` (precedence: module docstring).

    Raises:
        PlanError: the plans file cannot be used.
        ConfigError: the config file or the result is invalid (names the key).
    """
    plan = read_plan_overrides(plans_path)
    user = apply_overrides(read_raw_config(config_path), overrides)
    planned_model = _model_name(plan, None)
    user_model = _model_name(user, planned_model)
    if planned_model is not None and user_model is not None and user_model != planned_model:
        log.warning("--plans: the config uses model %r, so the plan's %r keys are not applied", user_model,
                    planned_model)
        plan = {k: v for k, v in plan.items() if k != "model"}
    return config_from_dict(merge_under(plan, user))
