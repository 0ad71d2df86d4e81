"""Markdown reports and plots for one run, and comparison tables across runs.

Everything here reads a finished (or still running) run directory, see
:mod:`fedseg.engine.rundir` for the layout and the ``metrics.jsonl`` record format, and writes
only ``report.md`` and ``plots/*.png`` (atomically: temp file + rename), so a report can be
regenerated at any time, also while the run is still writing.

Conventions used in every table:

* "mean ± sd" uses the **sample** standard deviation (``ddof=1``); with a single value only
  the mean is shown. Non-finite values (an HD95 of an empty prediction is ``inf`` or ``NaN``)
  are left out of means and shown as "–" like missing metrics.
* MB are 10^6 bytes.
* A method is evaluated with its global model, or with its personalised models when it has
  no global model (``has_global_model`` false in ``run_info.json``, e.g. local-only training).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import matplotlib
import yaml

# Headless (CI, servers) rendering. Switching the backend after pyplot is loaded would close
# the caller's open figures (e.g. in a notebook), so only pick it when pyplot is not in use;
# the plots below draw on Figure objects, which render with Agg whatever the backend is.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedseg.engine.rundir import RunDir, atomic_write_text, read_metrics  # noqa: E402

__all__ = ["ReportError", "comparison_rows", "comparison_table", "write_comparison", "write_report"]

logger = logging.getLogger(__name__)

SERVER = "__server__"
"""``site`` of the per-round server records (same value as :data:`fedseg.runtime.sim.SERVER`)."""

METRICS: tuple[str, ...] = ("dice", "iou", "hd95", "precision", "recall")
_HEADERS = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (mm)", "precision": "precision", "recall": "recall"}
_DECIMALS = {"dice": 3, "iou": 3, "hd95": 2, "precision": 3, "recall": 3}
_MODELS = ("global", "personal")
_DASH = "–"
_MB = 1e6
_PNG_DPI = 100


class ReportError(ValueError):
    """A report cannot be written; the message names the path or value and what is expected."""


# ---------------------------------------------------------------------------------- numbers


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing, not a number, or not finite."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample sd (ddof=1) of the finite values; sd is None for fewer than two."""
    kept = [v for v in (_finite(x) for x in values) if v is not None]
    if not kept:
        return None, None
    if len(kept) == 1:
        return kept[0], None
    return statistics.fmean(kept), statistics.stdev(kept)


def _fmt(value: Any, decimals: int) -> str:
    number = _finite(value)
    return _DASH if number is None else f"{number:.{decimals}f}"


def _fmt_mean_sd(mean: float | None, sd: float | None, decimals: int) -> str:
    if mean is None:
        return _DASH
    if sd is None:
        return _fmt(mean, decimals)
    return f"{_fmt(mean, decimals)} ± {_fmt(sd, decimals)}"


def _fmt_int(value: Any) -> str:
    number = _finite(value)
    return _DASH if number is None else str(int(number))


def _fmt_mb(n_bytes: float) -> str:
    mb = n_bytes / _MB
    return f"{mb:.1f}" if mb >= 100 else f"{mb:.3f}"


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return _DASH
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fmt_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _fence(text: str) -> str:
    """A fenced code block that survives backticks inside ``text``."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}bash\n{text}\n{fence}"


def _relpath(target: Path, start: Path) -> str:
    return PurePath(os.path.relpath(target, start)).as_posix()


# ---------------------------------------------------------------------------------- loading


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


MetricTable = dict[str, dict[str, dict[str, Any]]]
"""``{model: {site: {metric: value}}}``, e.g. ``summary.json["test"]``."""


@dataclass
class _Run:
    """Everything a report needs from one run directory."""

    root: Path
    info: dict[str, Any]
    config: dict[str, Any]
    command: str | None
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @classmethod
    def load(cls, root: Path) -> _Run:
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

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.config.get("name") or self.root.name)

    @property
    def algorithm_params(self) -> dict[str, Any]:
        params = self.info.get("algorithm_params", self.config.get("algorithm"))
        return dict(params) if isinstance(params, Mapping) else {}

    @property
    def algorithm(self) -> str:
        return str(self.info.get("algorithm") or self.algorithm_params.get("name") or "?")

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {k: v for k, v in self.algorithm_params.items() if k != "name"}

    @property
    def has_global_model(self) -> bool:
        if "has_global_model" in self.info:
            return bool(self.info["has_global_model"])
        if self.summary and "global" in (self.summary.get("test") or {}):
            return True
        return any(r.get("kind") == "eval" and r.get("model") == "global" for r in self.records)

    @property
    def eval_model(self) -> str:
        """The model this method is evaluated with: global, or personal without a global model."""
        return "global" if self.has_global_model else "personal"

    @property
    def planned_rounds(self) -> int | None:
        federation = self.config.get("federation")
        rounds = federation.get("rounds") if isinstance(federation, Mapping) else None
        if rounds is None and self.summary:
            rounds = self.summary.get("rounds")
        return int(rounds) if isinstance(rounds, (int, float)) else None

    @property
    def sites(self) -> list[str]:
        sites = [str(s) for s in self.info.get("sites", [])]
        for r in self.records:
            if r.get("kind") == "eval" and r.get("site") not in sites:
                sites.append(str(r.get("site")))
        return sites

    def by_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]

    def evals(self, split: str) -> list[dict[str, Any]]:
        return [r for r in self.by_kind("eval") if r.get("split") == split]


def _latest_round_table(records: Sequence[Mapping[str, Any]]) -> tuple[MetricTable, int | None]:
    """Metrics of the latest round among eval ``records``, as ``{model: {site: metrics}}``."""
    if not records:
        return {}, None
    latest = max(int(r.get("round", 0)) for r in records)
    table: MetricTable = {}
    for r in records:
        if int(r.get("round", 0)) == latest:
            table.setdefault(str(r.get("model")), {})[str(r.get("site"))] = dict(r)
    return table, latest


def _final_metrics(run: _Run, split: str) -> tuple[MetricTable, int | None]:
    """Per-model, per-site metrics of ``split``: test from summary.json, else the latest round."""
    if split == "test" and run.summary and isinstance(run.summary.get("test"), Mapping) and run.summary["test"]:
        rounds = run.summary.get("rounds")
        return {str(m): dict(s) for m, s in run.summary["test"].items()}, int(rounds) if rounds else None
    return _latest_round_table(run.evals(split))


def _same_metrics(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]) -> bool:
    if set(a) != set(b):
        return False
    return all(_finite(a[s].get(k)) == _finite(b[s].get(k)) for s in a for k in (*METRICS, "n"))


# ---------------------------------------------------------------------------------- plots


def _save_png(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to ``path`` atomically (temp name in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, format="png", dpi=_PNG_DPI, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _new_axes(title: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    return fig, ax


def _series(records: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    """``{round: mean of record[key]}`` over the finite values of each round."""
    values: dict[int, list[float]] = {}
    for r in records:
        v = _finite(r.get(key))
        if v is not None:
            values.setdefault(int(r.get("round", 0)), []).append(v)
    return {rnd: statistics.fmean(vs) for rnd, vs in sorted(values.items())}


def _plot_dice(run: _Run, path: Path) -> Path | None:
    val = run.evals("val")
    if not val:
        return None
    sites = run.sites
    curves = {
        (model, site): _series([r for r in val if r.get("model") == model and r.get("site") == site], "dice")
        for model in _MODELS
        for site in sites
    }
    global_curves = {s: curves[("global", s)] for s in sites if curves[("global", s)]}
    personal_curves = {s: curves[("personal", s)] for s in sites if curves[("personal", s)]}
    # FedAvg-like methods record the global metrics again as "personal": draw them once.
    show_personal = not global_curves or personal_curves != global_curves
    fig, ax = _new_axes("Validation Dice per site", "Dice")
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for i, site in enumerate(sites):
        color = colors[i % len(colors)]
        if site in global_curves:
            xs, ys = zip(*global_curves[site].items())
            ax.plot(xs, ys, "-o", color=color, label=f"{site} (global)")
        if show_personal and site in personal_curves:
            xs, ys = zip(*personal_curves[site].items())
            style = "--s" if global_curves else "-o"
            ax.plot(xs, ys, style, color=color, label=f"{site} (personal)")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize="small")
    return _save_png(fig, path)


def _plot_loss(run: _Run, path: Path) -> Path | None:
    train = [r for r in run.by_kind("train") if r.get("site") != SERVER]
    if not train:
        return None
    fig, ax = _new_axes("Mean training loss per site", "loss")
    for client in dict.fromkeys(str(r.get("site")) for r in train):
        curve = _series([r for r in train if r.get("site") == client], "loss")
        if curve:
            xs, ys = zip(*curve.items())
            ax.plot(xs, ys, "-o", label=client)
    ax.legend(fontsize="small")
    return _save_png(fig, path)


def _plot_bytes(run: _Run, path: Path) -> Path | None:
    rounds = run.by_kind("round")
    if not rounds:
        return None
    fig, ax = _new_axes("Communication per round", "MB")
    for key, label in (("bytes_up", "up (clients → server)"), ("bytes_down", "down (server → clients)")):
        curve = _series(rounds, key)
        if curve:
            xs, ys = zip(*curve.items())
            ax.plot(xs, [y / _MB for y in ys], "-o", label=label)
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize="small")
    return _save_png(fig, path)


def _plot_weights(run: _Run, path: Path) -> Path | None:
    """Aggregation weight of every client per round (``kind: "weights"`` records, e.g. AAM), with
    the FedAvg weight ``n_k/N`` dashed when the records carry it."""
    weights = run.by_kind("weights")
    if not weights:
        return None
    sites = list(dict.fromkeys(str(r.get("site")) for r in weights))
    fig, ax = _new_axes("Aggregation weight per client", "weight")
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for i, site in enumerate(sites):
        rows = [r for r in weights if r.get("site") == site]
        color = colors[i % len(colors)]
        for key, style, label in (("weight", "-o", site), ("fedavg_weight", ":", f"{site} (n_k/N)")):
            curve = _series(rows, key)
            if curve:
                xs, ys = zip(*curve.items())
                ax.plot(xs, ys, style, color=color, label=label)
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize="small")
    return _save_png(fig, path)


# ---------------------------------------------------------------------------------- one run


def _site_table(sites: Sequence[str], per_site: Mapping[str, Mapping[str, Any]]) -> list[str]:
    header = "| site | n | " + " | ".join(_HEADERS[m] for m in METRICS) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(METRICS)]
    shown = [s for s in sites if s in per_site] + [s for s in per_site if s not in sites]
    for site in shown:
        m = per_site[site]
        cells = [_fmt(m.get(k), _DECIMALS[k]) for k in METRICS]
        lines.append(f"| {_md_cell(site)} | {_fmt_int(m.get('n'))} | " + " | ".join(cells) + " |")
    ns = [_finite(per_site[s].get("n")) for s in shown]
    total_n = _fmt_int(sum(n for n in ns if n is not None)) if ns and all(n is not None for n in ns) else _DASH
    means = [_fmt_mean_sd(*_mean_sd([per_site[s].get(k) for s in shown]), _DECIMALS[k]) for k in METRICS]
    lines.append(f"| **mean** | {total_n} | " + " | ".join(means) + " |")
    return lines


def _results_section(run: _Run) -> list[str]:
    metrics, rnd = _final_metrics(run, "test")
    split_title = "Test results"
    out: list[str] = []
    if run.summary is None or not metrics:
        metrics, rnd = _final_metrics(run, "val")
        planned = run.planned_rounds
        of = f" of {planned}" if planned else ""
        if metrics:
            split_title = f"Validation results (round {rnd}{of})"
            out += [
                f"> **Run not finished** (no summary.json): showing the latest validation round, "
                f"{rnd}{of}, instead of test metrics.",
                "",
            ]
        else:
            return ["## Results", "", "> **Run not finished**: no test or validation metrics yet.", ""]
    sites = run.sites
    for model in _MODELS:
        title = f"## {split_title}: {'global model' if model == 'global' else 'personalised models'}"
        out += [title, ""]
        if model == "global" and not run.has_global_model:
            out += [f"No global model: {run.algorithm} trains one model per site (see personalised models).", ""]
            continue
        per_site = metrics.get(model)
        if not per_site:
            out += ["Not evaluated (personalised evaluation off, or pooled training).", ""]
            continue
        if model == "personal" and "global" in metrics and _same_metrics(per_site, metrics["global"]):
            out += [
                f"Identical to the global model: {run.algorithm} keeps no local parameters, "
                "so each site's personalised model is the global model.",
                "",
            ]
            continue
        out += _site_table(sites, per_site) + [""]
    split = "test" if split_title == "Test results" else "val"
    unevaluated = [s for s in sites if not any(s in metrics.get(m, {}) for m in _MODELS)]
    if unevaluated:
        # e.g. a weakly-labelled site without any mask: it trains but has no val/test case
        out += [f"Not evaluated (no {split} case): {', '.join(_md_cell(s) for s in unevaluated)}; left out of the "
                "tables and their means (see the Data table).", ""]
    out += [
        "*mean*: mean ± sd across sites (sample sd, ddof=1); n: total cases. "
        "Non-finite values (e.g. HD95 of an empty prediction) are left out of the mean and shown as –.",
        "",
    ]
    return out


def _best_val_round(run: _Run) -> list[str]:
    model = run.eval_model
    val = [r for r in run.evals("val") if r.get("model") == model]
    lines = ["## Best validation round", ""]
    if not val:
        return lines + ["No validation metrics.", ""]
    per_round: dict[int, dict[str, float | None]] = {}
    for r in val:
        per_round.setdefault(int(r.get("round", 0)), {})[str(r.get("site"))] = _finite(r.get("dice"))
    scored = [(mean, rnd) for rnd, d in per_round.items() if (mean := _mean_sd(list(d.values()))[0]) is not None]
    if not scored:
        return lines + ["No finite validation Dice.", ""]
    best_mean, best_round = max(scored, key=lambda t: (t[0], -t[1]))
    planned = run.planned_rounds
    of = f" of {planned}" if planned else ""
    label = "global" if model == "global" else "personalised"
    sites = ", ".join(f"{s} {_fmt(v, 3)}" for s, v in per_round[best_round].items())
    return lines + [f"Round **{best_round}**{of}: mean {label} Dice **{best_mean:.3f}** ({sites}).", ""]


def _communication(run: _Run) -> list[str]:
    rounds = run.by_kind("round")
    lines = ["## Communication and time", ""]
    if not rounds:
        return lines + ["No completed rounds.", ""]
    n = len(rounds)
    up = sum(_finite(r.get("bytes_up")) or 0.0 for r in rounds)
    down = sum(_finite(r.get("bytes_down")) or 0.0 for r in rounds)
    wall = sum(_finite(r.get("seconds")) or 0.0 for r in rounds)
    overhead = sum(_finite(r.get("overhead_seconds")) or 0.0 for r in rounds)
    lines += [
        f"| over {n} round(s) | total | per round |",
        "|---|---:|---:|",
        f"| upload (MB) | {_fmt_mb(up)} | {_fmt_mb(up / n)} |",
        f"| download (MB) | {_fmt_mb(down)} | {_fmt_mb(down / n)} |",
        f"| wall time | {_fmt_seconds(wall)} | {_fmt_seconds(wall / n)} |",
        f"| server overhead | {_fmt_seconds(overhead)} | {_fmt_seconds(overhead / n)} |",
        "",
        "MB = 10^6 bytes, summed over clients. Wall time: sum of round times (client training, "
        "serialisation, aggregation; validation and test excluded). Server overhead: serialise + "
        "aggregate + broadcast.",
        "",
    ]
    return lines


def _data_section(run: _Run) -> list[str]:
    data_raw, federation_raw = run.config.get("data"), run.config.get("federation")
    data: Mapping[str, Any] = data_raw if isinstance(data_raw, Mapping) else {}
    federation: Mapping[str, Any] = federation_raw if isinstance(federation_raw, Mapping) else {}
    facts = []
    if data.get("source"):
        facts.append(f"source {data['source']}")
    if run.info.get("spatial_dims"):
        facts.append(f"{run.info['spatial_dims']}D")
    if run.info.get("num_classes"):
        facts.append(f"{run.info['num_classes']} classes (incl. background)")
    if run.info.get("in_channels"):
        facts.append(f"{run.info['in_channels']} input channel(s)")
    if federation:
        facts.append(
            f"{federation.get('rounds', '?')} rounds, fraction {federation.get('fraction', '?')}, "
            f"{federation.get('local_epochs', '?')} local epoch(s)"
        )
    if "seed" in run.info:
        facts.append(f"seed {run.info['seed']}")
    if run.info.get("device"):
        facts.append(f"device {run.info['device']}")
    lines = ["## Data", ""]
    if facts:
        lines += [" · ".join(facts), ""]
    if run.info.get("pooled_data"):
        lines += ["Pooled (centralised) training: one client holds every site's training data.", ""]
    train_n: dict[str, Any] = {}
    for r in run.by_kind("train"):
        if r.get("site") != SERVER:
            train_n[str(r.get("site"))] = r.get("n")
    val, _ = _latest_round_table(run.evals("val"))
    test, _ = _final_metrics(run, "test")

    def split_n(table: MetricTable, site: str) -> str:
        for model in _MODELS:
            if site in table.get(model, {}):
                return _fmt_int(table[model][site].get("n"))
        return _DASH

    clients = [str(c) for c in run.info.get("clients", [])]
    rows = run.sites + [c for c in (*clients, *train_n) if c not in run.sites]
    lines += ["| site | train n | val n | test n |", "|---|---:|---:|---:|"]
    for site in dict.fromkeys(rows):
        lines.append(
            f"| {_md_cell(site)} | {_fmt_int(train_n.get(site))} | {split_n(val, site)} | {split_n(test, site)} |"
        )
    return lines + [""]


def _render_report(run: _Run, plots: Mapping[str, Path]) -> str:
    params = _fmt_params(run.hyperparams)
    title = f"# {run.name} — {run.algorithm}" + (f" ({params})" if params else "")
    lines = [title, ""]
    lines += ["## Command", "", _fence(run.command) if run.command else "(command.txt missing)", ""]
    lines += _data_section(run)
    lines += _results_section(run)
    lines += _best_val_round(run)
    lines += _communication(run)
    if plots:
        lines += ["## Plots", ""]
        captions = {"dice": "Validation Dice per site", "loss": "Training loss", "bytes": "Communication",
                    "weights": "Aggregation weights"}
        for key, path in plots.items():
            lines += [f"![{captions[key]}]({_relpath(path, run.root)})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for one run and return the report's path.

    Reads ``run_info.json``, ``config.yaml``, ``command.txt``, ``metrics.jsonl`` and
    ``summary.json``. Without ``summary.json`` (the run has not finished) the results tables show
    the latest validation round instead of test metrics, and say so.

    Args:
        run_dir: the run directory (the ``--out`` of a run).

    Returns:
        ``run_dir/report.md``.

    Raises:
        ReportError: ``run_dir`` is not a run directory, or one of its JSON files is corrupt.
    """
    run = _Run.load(Path(run_dir))
    rd = RunDir(run.root)
    plots: dict[str, Path] = {}
    for key, plot in (("dice", _plot_dice), ("loss", _plot_loss), ("bytes", _plot_bytes), ("weights", _plot_weights)):
        name = {"dice": "dice_per_site.png", "loss": "loss.png", "bytes": "bytes.png", "weights": "weights.png"}[key]
        written = plot(run, rd.plots / name)
        if written is not None:
            plots[key] = written
    atomic_write_text(rd.report, _render_report(run, plots))
    logger.info("wrote %s", rd.report)
    return rd.report


# ---------------------------------------------------------------------------------- comparison


@dataclass
class _Group:
    """Runs of one method (same name, algorithm and hyperparameters), differing by seed."""

    runs: list[_Run]
    label: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first(self) -> _Run:
        return self.runs[0]


def _group_runs(runs: Sequence[_Run]) -> list[_Group]:
    groups: dict[str, _Group] = {}
    for run in runs:
        key = json.dumps([run.name, run.algorithm, run.algorithm_params], sort_keys=True, default=str)
        groups.setdefault(key, _Group(runs=[])).runs.append(run)
    ordered = list(groups.values())
    for g in ordered:
        r = g.first
        g.label = r.name if r.name == r.algorithm else f"{r.name} ({r.algorithm})"
    labels = [g.label for g in ordered]
    for g in ordered:
        if labels.count(g.label) > 1 and g.first.hyperparams:
            g.label += f" [{_fmt_params(g.first.hyperparams)}]"
    labels = [g.label for g in ordered]
    seen: dict[str, int] = {}
    for g, label in zip(ordered, labels):
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            g.label = f"{label} #{seen[label]}"
    return ordered


def _load_runs(run_dirs: Sequence[Path]) -> list[_Run]:
    if not run_dirs:
        raise ReportError("no run directories given; pass one or more --out folders of runs")
    return [_Run.load(Path(p)) for p in run_dirs]


def _all_sites(runs: Sequence[_Run]) -> list[str]:
    return list(dict.fromkeys(s for run in runs for s in run.sites))


def _compare(runs: Sequence[_Run], split: str, metric: str) -> tuple[list[_Group], list[str]]:
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    groups = _group_runs(runs)
    sites = _all_sites(runs)
    for g in groups:
        model = g.first.eval_model
        per_run: list[dict[str, float | None]] = []
        for run in g.runs:
            table, _ = _final_metrics(run, split)
            if not table.get(model):
                logger.warning("%s: no %s metrics of the %s model (unfinished run?)", run.root, split, model)
            per_site = table.get(model, {})
            values = {s: _finite(per_site.get(s, {}).get(metric)) for s in sites}
            values["mean"] = _mean_sd([values[s] for s in sites])[0]
            per_run.append(values)
        for site in (*sites, "mean"):
            values_at = [v[site] for v in per_run]
            mean, sd = _mean_sd(values_at)
            g.rows.append(
                {
                    "method": g.label,
                    "name": g.first.name,
                    "algorithm": g.first.algorithm,
                    "algorithm_params": g.first.algorithm_params,
                    "model": model,
                    "split": split,
                    "metric": metric,
                    "site": site,
                    "mean": mean,
                    "sd": sd,
                    "values": values_at,
                    "seeds": [run.info.get("seed") for run in g.runs],
                    "runs": [str(run.root) for run in g.runs],
                }
            )
    return groups, sites


def comparison_rows(run_dirs: Sequence[Path], split: str = "test", metric: str = "dice") -> list[dict[str, Any]]:
    """The numbers behind :func:`comparison_table`: one dict per method and site.

    Runs with the same ``name``, ``algorithm`` and ``algorithm_params`` (in ``run_info.json``)
    are one method whose seeds are combined. Each method is evaluated with its global model, or
    its personalised models when it has none.

    Args:
        run_dirs: run directories.
        split: ``"test"`` (summary.json; else test records of metrics.jsonl) or ``"val"`` (the
            latest validation round).
        metric: one of ``dice``, ``iou``, ``hd95``, ``precision``, ``recall``.

    Returns:
        Dicts with keys ``method`` (column label), ``name``, ``algorithm``, ``algorithm_params``,
        ``model`` (global|personal), ``split``, ``metric``, ``site`` (a site, or ``"mean"``: the
        mean over sites of each run, then over seeds), ``mean`` and ``sd`` (over seeds, sample sd
        with ddof=1; None when fewer than two finite values, ``mean`` None when none), ``values``
        (one per run, None where missing), ``seeds`` and ``runs`` (paths), in method-then-site
        order.

    Raises:
        ReportError: no run directories, an unknown metric, or a folder that is not a run.
    """
    groups, _ = _compare(_load_runs(run_dirs), split, metric)
    return [row for g in groups for row in g.rows]


def _render_table(groups: Sequence[_Group], sites: Sequence[str], metric: str) -> str:
    decimals = _DECIMALS[metric]
    header = "| site | " + " | ".join(_md_cell(g.label) for g in groups) + " |"
    lines = [header, "|---|" + "---:|" * len(groups)]
    for site in (*sites, "mean"):
        cells = []
        for g in groups:
            row = next(r for r in g.rows if r["site"] == site)
            cells.append(_fmt_mean_sd(row["mean"], row["sd"], decimals))
        name = "**mean**" if site == "mean" else _md_cell(site)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(run_dirs: Sequence[Path], split: str = "test", metric: str = "dice") -> str:
    """A markdown table of ``metric`` per site (rows) and method (columns) over several runs.

    Cells are mean ± sd over the seeds of a method (sample sd, ddof=1; a single seed shows the
    value alone); see :func:`comparison_rows` for grouping, the evaluated model and the mean row.

    Args:
        run_dirs: run directories.
        split: ``"test"`` or ``"val"``.
        metric: one of ``dice``, ``iou``, ``hd95``, ``precision``, ``recall``.

    Returns:
        The table, ending with a newline.
    """
    groups, sites = _compare(_load_runs(run_dirs), split, metric)
    return _render_table(groups, sites, metric)


def _plot_comparison(groups: Sequence[_Group], sites: Sequence[str], path: Path) -> Path:
    fig = Figure(figsize=(max(6.0, 1.2 * (len(sites) + 1) * max(1, len(groups)) / 2), 4))
    ax = fig.add_subplot()
    xs = list(range(len(sites) + 1))
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        rows = {r["site"]: r for r in g.rows}
        heights = [rows[s]["mean"] if rows[s]["mean"] is not None else 0.0 for s in (*sites, "mean")]
        errors = [rows[s]["sd"] if rows[s]["sd"] is not None else math.nan for s in (*sites, "mean")]
        offsets = [x - 0.4 + width * (i + 0.5) for x in xs]
        ax.bar(offsets, heights, width, yerr=errors, capsize=3, label=g.label)
    ax.set_xticks(xs)
    ax.set_xticklabels([*sites, "mean"])
    ax.set_ylabel("Dice")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Dice per site and method")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save_png(fig, path)


def write_comparison(run_dirs: Sequence[Path], out: Path) -> Path:
    """Write a comparison ``report.md`` (Dice and HD95 tables) and ``dice_comparison.png``.

    Args:
        run_dirs: run directories; same-method runs that differ only by seed are combined.
        out: a folder (``out/report.md`` is written) or a path ending in ``.md``; the plot goes
            next to the report.

    Returns:
        The path of the written report.
    """
    out = Path(out)
    report = out if out.suffix == ".md" else out / "report.md"
    folder = report.parent
    runs = _load_runs(run_dirs)
    dice_groups, sites = _compare(runs, "test", "dice")
    hd_groups, _ = _compare(runs, "test", "hd95")
    plot = _plot_comparison(dice_groups, sites, folder / "dice_comparison.png")
    lines = [
        f"# Comparison: {len(dice_groups)} method(s), {len(runs)} run(s)",
        "",
        "Test split. Each method is evaluated with its global model, or its personalised models when it "
        "has no global model. Runs with the same name, algorithm and hyperparameters are one method: "
        "cells are mean ± sd over its seeds (sample sd, ddof=1). The mean row averages the sites of "
        "each run, then the seeds. – marks a missing or non-finite value.",
        "",
        "## Dice (higher is better)",
        "",
        _render_table(dice_groups, sites, "dice"),
        "## HD95 in mm (lower is better)",
        "",
        _render_table(hd_groups, sites, "hd95"),
        f"![Dice per site and method]({_relpath(plot, folder)})",
        "",
        "## Methods",
        "",
        "| method | algorithm | hyperparameters | evaluated model | seeds | runs |",
        "|---|---|---|---|---|---|",
    ]
    for g in dice_groups:
        links = []
        for run in g.runs:
            own = RunDir(run.root).report
            target = own if own.is_file() else run.root
            note = "" if own.is_file() else " (no report.md yet)"
            links.append(f"[{_md_cell(run.root.name)}]({_relpath(target, folder)}){note}")
        seeds = ", ".join(str(r.info.get("seed", "?")) for r in g.runs)
        lines.append(
            f"| {_md_cell(g.label)} | {g.first.algorithm} | {_md_cell(_fmt_params(g.first.hyperparams)) or _DASH} "
            f"| {g.first.eval_model} | {seeds} | {', '.join(links)} |"
        )
    atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    logger.info("wrote %s", report)
    return report
