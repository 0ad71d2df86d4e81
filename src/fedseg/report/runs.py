"""Reading one run directory: what was run, which model judges it, which checkpoint was tested.

:class:`RunRecords` wraps ``run_info.json``, ``config.yaml``, ``command.txt``, ``metrics.jsonl``
and ``summary.json`` (layout in :mod:`fedseg.engine.rundir`, keys in :mod:`fedseg.records`). It
reads runs of the current engine and of older ones, which lack ``judged_by``, the checkpoint
selection and the uncompressed byte counts:

* **judged by**: ``run_info.json`` / ``summary.json`` ``judged_by``; for older runs the algorithm's
  declared :attr:`~fedseg.algorithms.base.Algorithm.judged_by` (FedBN, FedPer, FedRep, Ditto and
  local-only are judged by their personalised models), else ``has_global_model``. A method judged
  by its personalised models is never scored through its "global" model, whose local layers were
  never aggregated.
* **selection**: ``summary.json`` ``selection``, else the ``selection``/``selected_round`` fields
  of the test records; older runs scored the last round's model, and that is what they say.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from fedseg.algorithms import ALGORITHMS
from fedseg.engine.rundir import RunDir, read_metrics
from fedseg.records import (
    METRIC_KEYS,
    Field,
    InfoKey,
    Kind,
    ModelKind,
    Selection,
    SelectionKey,
    Split,
    SummaryKey,
)
from fedseg.report.fmt import finite

__all__ = ["MODEL_ORDER", "MetricTable", "ReportError", "RunRecords", "configured_train_sites", "SelectionInfo", "load_runs", "same_metrics"]

MetricTable = dict[str, dict[str, dict[str, Any]]]
"""``{model: {site: {metric: value}}}``, e.g. ``summary.json["test"]``."""

MODEL_ORDER: tuple[str, ...] = (ModelKind.GLOBAL, ModelKind.PERSONAL, ModelKind.UNSEEN)

# config.yaml sections and keys the report reads (config keys, not run-record keys)
_FEDERATION, _ROUNDS, _TRAIN_SITES = "federation", "rounds", "train_sites"
_TRAIN, _OPTIMIZER_STATE, _AUTO = "train", "optimizer_state", "auto"


class ReportError(ValueError):
    """A report cannot be written; the message names the path or value and what is expected."""


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc}); it is written by the run, regenerate it") from exc
    if not isinstance(loaded, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(loaded).__name__}")
    return loaded


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def configured_train_sites(run_dir: Path) -> set[str] | None:
    """``federation.train_sites`` of a run directory's ``config.yaml`` (None: every site trained,
    or no config).

    Raises:
        ReportError: the config file is not valid YAML.
    """
    try:
        sites = _read_yaml(run_dir / "config.yaml").get(_FEDERATION, {}).get(_TRAIN_SITES)
    except (OSError, yaml.YAMLError) as exc:
        raise ReportError(f"{run_dir / 'config.yaml'}: cannot read ({type(exc).__name__}: {exc})") from None
    return {str(s) for s in sites} if sites else None


def _as_int(value: Any) -> int | None:
    number = finite(value)
    return None if number is None else int(number)


@dataclass(frozen=True)
class SelectionInfo:
    """Which checkpoint the test split was scored on.

    Attributes:
        mode: a :class:`~fedseg.records.Selection` value, or None when the run does not record one
            (runs older than ``eval.select``: they scored the last round's model).
        round: the global model's selected round (None without a global model or when unknown).
        per_client: the personalised models' selected rounds, ``{site: round}``.
        last_round: the run's last completed round (None when unknown).
    """

    mode: str | None
    round: int | None
    per_client: dict[str, int] = field(default_factory=dict)
    last_round: int | None = None

    @property
    def recorded(self) -> bool:
        return self.mode is not None

    @property
    def is_last(self) -> bool:
        """True when the tested checkpoint is the last round's (``select: last`` or an older run)."""
        return self.mode is None or self.mode == Selection.LAST

    def round_for(self, model: str, site: str) -> int | None:
        """The round of ``model``'s tested checkpoint on ``site`` (the last round for older runs)."""
        if self.is_last:
            return self.last_round
        if model == ModelKind.PERSONAL and site in self.per_client:
            return self.per_client[site]
        return self.round


@dataclass
class RunRecords:
    """Everything a report needs from one run directory (read once: derived values are cached)."""

    root: Path
    info: dict[str, Any]
    config: dict[str, Any]
    command: str | None
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @classmethod
    def load(cls, root: Path) -> RunRecords:
        """Read the run directory ``root``.

        Raises:
            ReportError: ``root`` is not a directory, holds neither ``run_info.json`` nor
                ``metrics.jsonl``, or one of its JSON files is corrupt.
        """
        root = Path(root)
        run = RunDir(root)
        if not root.is_dir():
            raise ReportError(f"{root}: not a directory; pass a run directory (the --out of a run)")
        if not run.info.is_file() and not run.metrics.is_file():
            raise ReportError(
                f"{root}: no run_info.json and no metrics.jsonl; is this a run directory (the --out of a run)?"
            )
        command = run.command.read_text(encoding="utf-8").strip() if run.command.is_file() else None
        return cls(
            root=root,
            info=_read_json(run.info) or {},
            config=_read_yaml(run.config),
            command=command or None,
            records=read_metrics(run.metrics),
            summary=_read_json(run.summary),
        )

    # ------------------------------------------------------------------ what was run
    @property
    def name(self) -> str:
        return str(self.info.get(InfoKey.NAME) or self.config.get(InfoKey.NAME) or self.root.name)

    @property
    def algorithm_params(self) -> dict[str, Any]:
        params = self.info.get(InfoKey.ALGORITHM_PARAMS, self.config.get(InfoKey.ALGORITHM))
        return dict(params) if isinstance(params, Mapping) else {}

    @property
    def algorithm(self) -> str:
        return str(self.info.get(InfoKey.ALGORITHM) or self.algorithm_params.get(InfoKey.NAME) or "?")

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {k: v for k, v in self.algorithm_params.items() if k != InfoKey.NAME}

    @property
    def seed(self) -> Any:
        return self.info.get(InfoKey.SEED, self.config.get(InfoKey.SEED))

    def _section(self, name: str) -> Mapping[str, Any]:
        section = self.config.get(name)
        return section if isinstance(section, Mapping) else {}

    @property
    def planned_rounds(self) -> int | None:
        rounds = self._section(_FEDERATION).get(_ROUNDS)
        if rounds is None and self.summary:
            rounds = self.summary.get(SummaryKey.ROUNDS)
        return _as_int(rounds)

    @property
    def has_global_model(self) -> bool:
        if InfoKey.HAS_GLOBAL_MODEL in self.info:
            return bool(self.info[InfoKey.HAS_GLOBAL_MODEL])
        if self.summary and ModelKind.GLOBAL in (self.summary.get(SummaryKey.TEST) or {}):
            return True
        return any(r.get(Field.MODEL) == ModelKind.GLOBAL for r in self.by_kind(Kind.EVAL))

    @property
    def judged_by_declared(self) -> bool:
        """True when the run itself records its ``judged_by``; False when it is inferred."""
        return self._declared_judged_by() is not None

    def _declared_judged_by(self) -> str | None:
        for value in (self.info.get(InfoKey.JUDGED_BY), (self.summary or {}).get(SummaryKey.JUDGED_BY)):
            if value in tuple(ModelKind):
                return str(value)
        return None

    @cached_property
    def judged_by(self) -> str:
        """The :class:`~fedseg.records.ModelKind` this method is judged by on participating sites."""
        declared = self._declared_judged_by()
        if declared is not None:
            return declared
        if not self.has_global_model:
            return ModelKind.PERSONAL
        if self.algorithm in ALGORITHMS:
            return str(ALGORITHMS.get(self.algorithm).judged_by)
        return ModelKind.GLOBAL

    @property
    def optimizer_state(self) -> str | None:
        """The optimizer policy (``reset`` or ``persist``): run_info, else ``train.optimizer_state``
        of config.yaml (``auto`` resolved through the algorithm), else None."""
        value = self.info.get(InfoKey.OPTIMIZER_STATE) or self._section(_TRAIN).get(_OPTIMIZER_STATE)
        if value == _AUTO and self.algorithm in ALGORITHMS:
            return str(ALGORITHMS.get(self.algorithm).optimizer_state)
        return str(value) if value else None

    @property
    def optimizer_state_declared(self) -> bool:
        return bool(self.info.get(InfoKey.OPTIMIZER_STATE))

    @property
    def unseen_policy(self) -> str | None:
        value = self.info.get(InfoKey.UNSEEN_POLICY)
        return str(value) if value else None

    @cached_property
    def sites(self) -> list[str]:
        sites = [str(s) for s in self.info.get(InfoKey.SITES, [])]
        for r in self.by_kind(Kind.EVAL):
            if r.get(Field.MODEL) != ModelKind.UNSEEN and str(r.get(Field.SITE)) not in sites:
                sites.append(str(r.get(Field.SITE)))
        return sites

    @cached_property
    def held_out(self) -> set[str]:
        """Evaluated sites that never trained (``federation.train_sites`` leaves them out, or the
        run scored them with its unseen-site model); they are left out of the means."""
        train_sites = self._section(_FEDERATION).get(_TRAIN_SITES)
        out = set()
        if train_sites and not self.info.get(InfoKey.POOLED_DATA):
            out = {s for s in self.sites if s not in {str(t) for t in train_sites}}
        return out | {str(r.get(Field.SITE)) for r in self.evals(Split.TEST) if r.get(Field.MODEL) == ModelKind.UNSEEN}

    # ------------------------------------------------------------------ records
    def by_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get(Field.KIND) == kind]

    def evals(self, split: str) -> list[dict[str, Any]]:
        return [r for r in self.by_kind(Kind.EVAL) if r.get(Field.SPLIT) == split]

    @cached_property
    def last_round(self) -> int | None:
        rounds = [_as_int(r.get(Field.ROUND)) for r in self.by_kind(Kind.ROUND)]
        known = [r for r in rounds if r is not None]
        if known:
            return max(known)
        return _as_int(self.summary.get(SummaryKey.ROUNDS)) if self.summary else None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    # ------------------------------------------------------------------ selection and test
    @cached_property
    def selection(self) -> SelectionInfo:
        raw = (self.summary or {}).get(SummaryKey.SELECTION)
        if isinstance(raw, Mapping) and raw.get(SelectionKey.MODE) in tuple(Selection):
            per_client = raw.get(SelectionKey.PER_CLIENT)
            return SelectionInfo(
                mode=str(raw[SelectionKey.MODE]),
                round=_as_int(raw.get(SelectionKey.ROUND)),
                per_client={str(s): int(r) for s, r in (per_client or {}).items() if _as_int(r) is not None},
                last_round=self.last_round,
            )
        tests = [r for r in self.evals(Split.TEST) if r.get(Field.SELECTION) in tuple(Selection)]
        if not tests:
            return SelectionInfo(mode=None, round=None, last_round=self.last_round)
        modes = {str(r[Field.SELECTION]) for r in tests}
        mode = Selection.BEST_VAL if Selection.BEST_VAL in modes else Selection.LAST
        chosen = [r for r in tests if r[Field.SELECTION] == mode]
        global_rounds = [_as_int(r.get(Field.SELECTED_ROUND)) for r in chosen if r.get(Field.MODEL) == ModelKind.GLOBAL]
        per_client = {
            str(r.get(Field.SITE)): rnd
            for r in chosen
            if r.get(Field.MODEL) == ModelKind.PERSONAL and (rnd := _as_int(r.get(Field.SELECTED_ROUND))) is not None
        }
        return SelectionInfo(
            mode=str(mode),
            round=next((r for r in global_rounds if r is not None), None),
            per_client=per_client if self.judged_by == ModelKind.PERSONAL else {},
            last_round=self.last_round,
        )

    def _test_records(self, selection: str | None) -> MetricTable:
        """Test records as a table: those with ``selection`` (None: records without the field)."""
        table: MetricTable = {}
        for r in self.evals(Split.TEST):
            if r.get(Field.SELECTION) == selection:
                table.setdefault(str(r.get(Field.MODEL)), {})[str(r.get(Field.SITE))] = dict(r)
        return table

    def test_table(self) -> MetricTable:
        """Per-model, per-site test metrics of the selected checkpoint ({} when not tested yet)."""
        test = (self.summary or {}).get(SummaryKey.TEST)
        if isinstance(test, Mapping) and test:
            return {str(m): {str(s): dict(v) for s, v in sites.items()} for m, sites in test.items()}
        selection = self.selection
        return self._test_records(selection.mode)

    def test_last_table(self) -> MetricTable | None:
        """Test metrics of the last round's model, or None when the selected checkpoint is the last
        round's anyway (``select: last``, or a run older than model selection)."""
        if self.selection.is_last:
            return None
        last = (self.summary or {}).get(SummaryKey.TEST_LAST)
        if isinstance(last, Mapping) and last:
            return {str(m): {str(s): dict(v) for s, v in sites.items()} for m, sites in last.items()}
        table = self._test_records(Selection.LAST)
        return table or None

    def val_table(self, *, at_selection: bool = True) -> tuple[MetricTable, int | None]:
        """Validation metrics per model and site, and the latest validation round.

        With ``at_selection`` and a recorded best-validation selection, each site's metrics are
        those of the selected round of that model (per client for personalised models); otherwise
        those of the latest validation round.
        """
        val = self.evals(Split.VAL)
        if not val:
            return {}, None
        latest = max(_as_int(r.get(Field.ROUND)) or 0 for r in val)
        selection = self.selection
        table: MetricTable = {}
        for r in val:
            model, site, rnd = str(r.get(Field.MODEL)), str(r.get(Field.SITE)), _as_int(r.get(Field.ROUND)) or 0
            wanted = selection.round_for(model, site) if at_selection and not selection.is_last else None
            if rnd == (wanted if wanted is not None else latest):
                table.setdefault(model, {})[site] = dict(r)
        return table, latest

    def judged_metrics(self, table: MetricTable) -> dict[str, dict[str, Any]]:
        """Per-site metrics of the model this method is judged by, from ``table``: the judged-by
        model on sites that trained, the unseen-site model (else the judged-by one) on held-out
        sites. Never another model in place of a missing judged-by one."""
        judged, unseen, held_out = table.get(self.judged_by, {}), table.get(ModelKind.UNSEEN, {}), self.held_out
        out = {s: dict(m) for s, m in judged.items() if s not in held_out}
        for site in held_out:
            if site in unseen or site in judged:
                out[site] = dict(unseen.get(site) or judged[site])
        return out

    def val_dice_by_round(self, model: str) -> dict[int, dict[str, float | None]]:
        """``{round: {site: validation Dice}}`` of ``model`` on the sites that train."""
        out: dict[int, dict[str, float | None]] = {}
        held_out = self.held_out
        for r in self.evals(Split.VAL):
            if r.get(Field.MODEL) == model and str(r.get(Field.SITE)) not in held_out:
                out.setdefault(_as_int(r.get(Field.ROUND)) or 0, {})[str(r.get(Field.SITE))] = finite(r.get(Field.DICE))
        return dict(sorted(out.items()))


def same_metrics(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]) -> bool:
    """True when two per-site tables hold the same finite metrics (e.g. personal == global)."""
    if set(a) != set(b):
        return False
    return all(finite(a[s].get(k)) == finite(b[s].get(k)) for s in a for k in METRIC_KEYS)


def load_runs(run_dirs: Sequence[Path]) -> list[RunRecords]:
    """Read several run directories (see :meth:`RunRecords.load`)."""
    if not run_dirs:
        raise ReportError("no run directories given; pass one or more --out folders of runs")
    return [RunRecords.load(Path(p)) for p in run_dirs]
