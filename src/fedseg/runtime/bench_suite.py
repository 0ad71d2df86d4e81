"""Benchmark suites: the YAML file, its planned runs, and the protocol every suite must keep.

A suite (``configs/bench/<name>.yaml``) names a base configuration, the datasets and methods to
compare and the seeds; :func:`plan_suite` turns it into one :class:`PlannedRun` per dataset x method
x seed, each an ordinary validated :class:`~fedseg.config.RunConfig` with its run directory
``OUT/<dataset>/<method>/s<seed>``. Keys::

    name: quick                    # defaults to the file name
    description: ...               # one paragraph, shown in the results table's header
    budget: ...                    # the CPU budget, in words (documentation only)
    preset: ../busbra_fedavg.yaml  # base config (relative: to the suite file); none: the defaults
    set: {federation.rounds: 2}    # dotted overrides applied to every run
    datasets:                      # optional; default one dataset named after the preset
      - {name: busbra, preset: ..., set: {...}, patient_split_exempt: {site: reason}}
    methods: registered            # one method per registered algorithm (``exclude: [...]``), or a list:
      - {name: no_dca, algorithm: {name: fedoap}, model: {dca: false}, set: {...}}
    algorithm_overrides:           # per algorithm name: applied to every method that uses it
      fedbcs: {model: {name: fedbcs_unet, ...}, algorithm: {...}, set: {...}}
    seeds: [0, 1, 2]
    loso: false                    # leave-one-site-out Dice of the global methods

Merge order of a run's config: the dataset's preset (else the suite's), the suite's ``set``, the
dataset's ``set``, the algorithm override (its ``model`` replaces the model section: another architecture; its
``algorithm`` keys are defaults under the method's), the method (``algorithm`` replaces the
section, keeping the preset's keys when it names the preset's algorithm; ``model`` updates keys;
``set``), the command line's ``--set``, then the seed. A method's own ``preset`` replaces the
dataset's (a baseline defined by its own config file).

Protocol (:func:`check_protocol`, refused with the key named): ``eval.select: best_val`` (the test
split is scored once, on the checkpoint chosen on validation), and a split by patient: every
site of a folder dataset has a group column (``data.group_column`` or its site entry), is
split by volume (3D, or a sliced site), or the dataset lists it in ``patient_split_exempt`` with
the reason (one image per patient); a ``data.split_file`` is trusted.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedseg.algorithms.registry import ALGORITHMS
from fedseg.config import ConfigError, RunConfig, config_from_dict
from fedseg.config.loading import apply_overrides
from fedseg.records import Selection
from fedseg.report.bench_table import MIN_SEEDS
from fedseg.runtime.common import RunError
from fedseg.runtime.loso import data_sites

__all__ = ["SUITE_KEYS", "SuiteError", "Method", "Dataset", "Suite", "PlannedRun", "find_suite", "suite_names",
           "load_suite", "plan_suite", "check_protocol", "run_dir_of", "MIN_SEEDS"]

SUITE_KEYS = ("name", "description", "budget", "preset", "set", "datasets", "methods", "exclude",
              "algorithm_overrides", "seeds", "loso")
_DATASET_KEYS = ("name", "preset", "set", "patient_split_exempt")
_METHOD_KEYS = ("name", "preset", "algorithm", "model", "set")
_OVERRIDE_KEYS = ("algorithm", "model", "set")


class SuiteError(RunError):
    """A suite file that cannot be read, planned, or that breaks the protocol (the message names the key)."""


@dataclass(frozen=True)
class Method:
    name: str
    algorithm: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)
    preset: Path | None = None  # replaces the dataset's preset (a baseline defined by its own config)


@dataclass(frozen=True)
class Dataset:
    name: str
    preset: Path | None
    set: dict[str, Any] = field(default_factory=dict)
    patient_split_exempt: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    budget: str
    base: dict[str, Any]  # the suite preset's raw mapping ({}: the defaults)
    set: dict[str, Any]  # dotted overrides of every run
    datasets: list[Dataset]
    methods: list[Method]
    overrides: dict[str, dict[str, Any]]
    seeds: list[int]
    loso: bool


@dataclass(frozen=True)
class PlannedRun:
    dataset: str
    method: str
    seed: int
    config: RunConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.method}/s{self.seed}"


def _suite_dirs() -> list[Path]:
    """Where suite names are looked up: ``./configs/bench`` then the checkout's ``configs/bench``."""
    here = Path.cwd() / "configs" / "bench"
    repo = Path(__file__).resolve().parents[3] / "configs" / "bench"
    return [here] if here.resolve() == repo.resolve() else [here, repo]


def suite_names() -> list[str]:
    """The suites found by name (the ``.yaml`` files of the suite folders)."""
    return sorted({p.stem for d in _suite_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def find_suite(name_or_path: str) -> Path:
    """The suite file of a name (``configs/bench/<name>.yaml``) or a path.

    Raises:
        SuiteError: neither exists (the message lists the suites and the nearest name).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    for folder in _suite_dirs():
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    names = suite_names()
    near = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise SuiteError(f"suite {name_or_path!r}: no such file and no configs/bench/{name_or_path}.yaml; "
                     f"allowed: {', '.join(names) or 'none found'}{hint}")


def _mapping(value: Any, where: str, allowed: Sequence[str] | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SuiteError(f"{where}: expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise SuiteError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")
    return dict(value)


def set_dotted(raw: dict[str, Any], values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``raw`` with each ``a.b.c: value`` of ``values`` set (values already parsed; a new mapping).

    Raises:
        SuiteError: a key descends into a value (``name.x`` where ``name`` is a string).
    """
    out = copy.deepcopy(raw)
    for key, value in values.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise SuiteError(f"{where}: {key}: {part!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"{what}: no such file: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise SuiteError(f"{what}: cannot read {path} ({type(exc).__name__}: {exc})") from None
    return _mapping(loaded, f"{what} {path}")


def _preset(value: Any, where: str, suite: Path) -> Path | None:
    """A preset path (relative: to the suite file), checked to exist."""
    if value is None:
        return None
    p = Path(str(value))
    p = p if p.is_absolute() else suite.parent / p
    if not p.is_file():
        raise SuiteError(f"{suite}: {where}: no such config file: {p}")
    return p


def _methods(raw: Any, exclude: list[str], path: Path) -> list[Method]:
    if raw == "registered":  # every registered algorithm, so a new one joins the suite by itself
        names = [n for n in ALGORITHMS.names() if n not in exclude]
        return [Method(n, {"name": n}) for n in names]
    if not isinstance(raw, list) or not raw:
        raise SuiteError(f"{path}: methods: expected 'registered' or a non-empty list of {{name, algorithm, ...}}")
    out = []
    for i, item in enumerate(raw):
        m = _mapping(item, f"{path}: methods[{i}]", _METHOD_KEYS)
        algorithm = _mapping(m.get("algorithm") or {"name": m.get("name")}, f"{path}: methods[{i}].algorithm")
        if not m.get("name") or not algorithm.get("name"):
            raise SuiteError(f"{path}: methods[{i}]: needs a name (and algorithm.name when it differs)")
        if str(algorithm["name"]) not in ALGORITHMS.names():
            raise SuiteError(f"{path}: methods[{i}].algorithm.name {algorithm['name']!r} is not registered; "
                             f"allowed: {', '.join(ALGORITHMS.names())}")
        out.append(Method(str(m["name"]), algorithm, _mapping(m.get("model"), f"{path}: methods[{i}].model"),
                          _mapping(m.get("set"), f"{path}: methods[{i}].set"),
                          _preset(m.get("preset"), f"methods[{i}].preset", path)))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise SuiteError(f"{path}: methods: duplicate name(s) {sorted({n for n in names if names.count(n) > 1})}")
    return out


def load_suite(path: Path) -> Suite:
    """Read and check a suite file (keys, methods, presets; not yet the run configs).

    Raises:
        SuiteError: an unknown key, a missing preset, an unregistered algorithm, no seeds.
    """
    raw = _mapping(_read_yaml(path, "suite"), f"suite {path}", SUITE_KEYS)

    def preset(value: Any, where: str) -> Path | None:
        return _preset(value, where, path)

    base_preset = preset(raw.get("preset"), "preset")
    base = _read_yaml(base_preset, "preset") if base_preset else {}
    every = _mapping(raw.get("set"), f"{path}: set")
    datasets = []
    for i, item in enumerate(raw.get("datasets") or []):
        d = _mapping(item, f"{path}: datasets[{i}]", _DATASET_KEYS)
        if not d.get("name"):
            raise SuiteError(f"{path}: datasets[{i}]: needs a name")
        datasets.append(Dataset(str(d["name"]), preset(d.get("preset"), f"datasets[{i}].preset"),
                                _mapping(d.get("set"), f"{path}: datasets[{i}].set"),
                                {str(k): str(v) for k, v in _mapping(d.get("patient_split_exempt"),
                                                                     f"{path}: datasets[{i}].patient_split_exempt").items()}))
    if not datasets:
        datasets = [Dataset(str(base.get("name") or "data"), None)]
    overrides = {str(k): _mapping(v, f"{path}: algorithm_overrides.{k}", _OVERRIDE_KEYS)
                 for k, v in _mapping(raw.get("algorithm_overrides"), f"{path}: algorithm_overrides").items()}
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SuiteError(f"{path}: seeds: expected a non-empty list of integers, got {seeds!r}")
    exclude = [str(x) for x in raw.get("exclude") or []]
    return Suite(str(raw.get("name") or path.stem), path, str(raw.get("description") or "").strip(),
                 str(raw.get("budget") or "").strip(), base, every, datasets, _methods(raw.get("methods"), exclude, path),
                 overrides, list(seeds), bool(raw.get("loso", False)))


def run_dir_of(out: Path, dataset: str, method: str, seed: int) -> Path:
    """``OUT/<dataset>/<method>/s<seed>``."""
    return out / dataset / method / f"s{seed}"


def _raw_config(suite: Suite, dataset: Dataset, method: Method) -> dict[str, Any]:
    own = method.preset or dataset.preset
    raw = _read_yaml(own, "preset") if own else copy.deepcopy(suite.base)
    raw = set_dotted(raw, suite.set, f"{suite.path}: set")
    raw = set_dotted(raw, dataset.set, f"{suite.path}: datasets.{dataset.name}.set")
    override = suite.overrides.get(str(method.algorithm["name"]), {})
    if "model" in override:
        raw["model"] = copy.deepcopy(override["model"])
    raw = set_dotted(raw, override.get("set") or {}, f"{suite.path}: algorithm_overrides.{method.algorithm['name']}")
    section = raw.get("algorithm")
    preset_algorithm: dict[str, Any] = section if isinstance(section, dict) else {}
    kept = preset_algorithm if preset_algorithm.get("name") == method.algorithm["name"] else {}
    raw["algorithm"] = {**kept, **(override.get("algorithm") or {}), **method.algorithm}
    raw["model"] = {**(raw.get("model") or {}), **method.model}
    raw = set_dotted(raw, method.set, f"{suite.path}: methods.{method.name}.set")
    raw["name"] = f"bench_{suite.name}_{dataset.name}_{method.name}"
    return raw


def check_protocol(cfg: RunConfig, dataset: Dataset, label: str) -> None:
    """Refuse a run that breaks the benchmark protocol (module docstring), naming the key.

    Raises:
        SuiteError: ``eval.select`` is not ``best_val``, or a site of a folder dataset is not split
            by patient.
    """
    if cfg.eval.select != Selection.BEST_VAL.value:
        raise SuiteError(f"{label}: eval.select is {cfg.eval.select!r}; the benchmark protocol selects on validation "
                         "only: eval.select must be best_val (remove the override)")
    data = cfg.data
    if data.source != "folder" or data.split_file is not None:
        return
    whole_volumes = data.spatial_dims == 3 and data.slice_axis is None
    for site in data_sites(cfg):
        spec = data.site_spec(site)
        by_volume = (spec is not None and (spec.slice_axis is not None or spec.spatial_dims == 3)) or whole_volumes
        if data.partition is not None or by_volume or data.group_column_of(site) or site in dataset.patient_split_exempt:
            continue
        raise SuiteError(f"{label}: site {site!r} has no group column, so its images are split one by one, not by "
                         "patient; set data.group_column (or the site's group_column), or list the site in the "
                         f"dataset's patient_split_exempt with the reason (e.g. one image per patient)")


def plan_suite(suite: Suite, out: Path, *, seeds: Sequence[int] | None = None, only: Sequence[str] | None = None,
               overrides: Sequence[str] = (), datasets: Sequence[str] | None = None) -> list[PlannedRun]:
    """Every run of the suite (datasets, then methods, then seeds), validated and protocol-checked.

    Args:
        seeds: replaces the suite's seeds.
        only: keep these methods (names of the suite's methods).
        datasets: keep these datasets (names of the suite's datasets).
        overrides: ``key=value`` applied to every run after the suite's own keys.

    Raises:
        SuiteError: an unknown ``only`` or ``datasets`` name, a config that does not validate, a protocol breach.
    """
    methods = suite.methods
    if only:
        unknown = [m for m in only if m not in {x.name for x in methods}]
        if unknown:
            raise SuiteError(f"--only {','.join(unknown)}: not a method of suite {suite.name}; allowed: "
                             f"{', '.join(m.name for m in methods)}")
        methods = [m for m in methods if m.name in only]
    chosen = suite.datasets
    if datasets:
        unknown = [d for d in datasets if d not in {x.name for x in chosen}]
        if unknown:
            raise SuiteError(f"--datasets {','.join(unknown)}: not a dataset of suite {suite.name}; allowed: "
                             f"{', '.join(d.name for d in chosen)}")
        chosen = [d for d in chosen if d.name in datasets]
    runs = []
    for dataset in chosen:
        for method in methods:
            raw = _raw_config(suite, dataset, method)
            try:
                raw = apply_overrides(raw, list(overrides))
            except ConfigError as exc:
                raise SuiteError(str(exc)) from None
            for seed in seeds or suite.seeds:
                label = f"suite {suite.name}, {dataset.name}/{method.name}/s{seed}"
                try:
                    cfg = config_from_dict({**raw, "seed": int(seed)})
                except ConfigError as exc:
                    raise SuiteError(f"{label}: {exc}") from None
                check_protocol(cfg, dataset, label)
                runs.append(PlannedRun(dataset.name, method.name, int(seed), cfg,
                                       run_dir_of(out, dataset.name, method.name, int(seed))))
    return runs
