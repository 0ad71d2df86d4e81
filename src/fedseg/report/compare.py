"""Comparison tables across runs: one column per method, each cell its judged-by model.

A method's cell is the per-site test metric of the model it is judged by (``judged_by``: its
global model, or its personalised models when it keeps local state), on the selected checkpoint;
the column header names that model, e.g. ``fedbn (personal)``. Runs with the same name,
algorithm, hyperparameters, judged-by model, selection mode and optimizer policy are one method
whose seeds are combined: mean ± sd over seeds (sample sd, ddof=1), with the number of seeds shown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedseg.engine.rundir import RunDir, atomic_write_text
from fedseg.records import Field, ModelKind, Split
from fedseg.report.fmt import (
    DASH,
    DECIMALS,
    METRICS,
    fmt_mb,
    fmt_mean_sd,
    fmt_params,
    fmt_ratio,
    image_mean,
    md_cell,
    mean_sd,
    relpath,
)
from fedseg.report.plots import plot_comparison
from fedseg.report.runs import MetricTable, ReportError, RunRecords, load_runs
from fedseg.report.single import model_words, optimizer_words, selection_short
from fedseg.report.traffic import run_traffic

__all__ = ["IMAGE_MEAN", "SITE_MEAN", "comparison_rows", "comparison_table", "write_comparison"]

logger = logging.getLogger(__name__)

SITE_MEAN = "mean"
"""``site`` of the row that averages the sites of each run (equal weights), then the seeds."""
IMAGE_MEAN = "image_mean"
"""``site`` of the row that weights the sites of each run by their test ``n``, then averages seeds."""
_ROW_LABELS = {SITE_MEAN: "**mean (sites)**", IMAGE_MEAN: "**mean (images)**"}


@dataclass
class _Group:
    """Runs of one method, differing by seed."""

    runs: list[RunRecords]
    label: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first(self) -> RunRecords:
        return self.runs[0]

    @property
    def judged_by(self) -> str:
        return self.first.judged_by

    @property
    def header(self) -> str:
        return f"{self.label} ({self.judged_by})"


def _selection_mode(run: RunRecords) -> str:
    return run.selection.mode or "last (not recorded)"


def _distinction(run: RunRecords, what: str) -> str:
    if what == "params":
        return fmt_params(run.hyperparams)
    if what == "optimizer":
        return f"optimizer={run.optimizer_state}"
    return f"select={_selection_mode(run)}"


def _group_runs(runs: Sequence[RunRecords]) -> list[_Group]:
    groups: dict[str, _Group] = {}
    for run in runs:
        key = json.dumps([run.name, run.algorithm, run.algorithm_params, run.judged_by, _selection_mode(run),
                          run.optimizer_state], sort_keys=True, default=str)
        groups.setdefault(key, _Group(runs=[])).runs.append(run)
    ordered = list(groups.values())
    for g in ordered:
        r = g.first
        g.label = r.name if r.name == r.algorithm else f"{r.name} ({r.algorithm})"
    # disambiguate equal labels by what differs: hyperparameters, optimizer policy, selection
    for extra in ("params", "optimizer", "select"):
        colliding: dict[str, list[_Group]] = {}
        for g in ordered:
            colliding.setdefault(g.label, []).append(g)
        for same in colliding.values():
            texts = [_distinction(g.first, extra) for g in same]
            if len(same) > 1 and len(set(texts)) > 1:  # only what tells them apart
                for g, text in zip(same, texts):
                    g.label += f" [{text}]" if text else ""
    labels = [g.label for g in ordered]
    seen: dict[str, int] = {}
    for g, label in zip(ordered, labels):
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            g.label = f"{label} #{seen[label]}"
    return ordered


def _all_sites(runs: Sequence[RunRecords]) -> list[str]:
    return list(dict.fromkeys(s for run in runs for s in run.sites))


def _judged_table(run: RunRecords, split: str, *, last: bool = False) -> dict[str, dict[str, Any]]:
    """Per-site metrics of the run's judged-by model on ``split`` (selected checkpoint, or the last
    round's with ``last``; held-out sites: the unseen-site model); never another model in its place."""
    table: MetricTable | None
    if split == Split.TEST:
        table = (run.test_last_table() or run.test_table()) if last else run.test_table()
    else:
        table, _ = run.val_table(at_selection=not last)
    per_site = run.judged_metrics(table or {})
    if not per_site:
        logger.warning("%s: no %s metrics of its %s (unfinished run, or personalised evaluation off?)",
                       run.root, split, model_words(run.judged_by))
    return per_site


def _compare(runs: Sequence[RunRecords], split: str, metric: str, *, last: bool = False) -> tuple[list[_Group], list[str]]:
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if split not in (Split.TEST, Split.VAL):
        raise ReportError(f"unknown split {split!r}; choose one of {Split.TEST}, {Split.VAL}")
    groups = _group_runs(runs)
    sites = _all_sites(runs)
    for g in groups:
        per_run: list[dict[str, float | None]] = []
        for run in g.runs:
            per_site = _judged_table(run, split, last=last)
            values = {s: mean_sd([per_site.get(s, {}).get(metric)])[0] for s in sites}
            trained = [s for s in sites if s not in run.held_out]
            values[SITE_MEAN] = mean_sd([values[s] for s in trained])[0]
            values[IMAGE_MEAN] = image_mean({s: m for s, m in per_site.items() if s in trained}, metric)
            per_run.append(values)
        held_out = sorted({s for run in g.runs for s in run.held_out})
        for site in (*sites, SITE_MEAN, IMAGE_MEAN):
            values_at = [v[site] for v in per_run]
            mean, sd = mean_sd(values_at)
            g.rows.append({
                "method": g.label, "header": g.header, "name": g.first.name, "algorithm": g.first.algorithm,
                "algorithm_params": g.first.algorithm_params, "model": g.judged_by,
                "judged_by_declared": all(r.judged_by_declared for r in g.runs),
                "selection": g.first.selection.mode,
                "selected_rounds": [_selected_rounds(r) for r in g.runs],
                "optimizer_state": g.first.optimizer_state, "split": split, "metric": metric, "site": site,
                "mean": mean, "sd": sd, "values": values_at, "n_seeds": len(g.runs), "held_out": site in held_out,
                "seeds": [r.seed for r in g.runs], "runs": [str(r.root) for r in g.runs],
            })  # fmt: skip
    return groups, sites


def _selected_rounds(run: RunRecords) -> int | dict[str, int] | None:
    selection = run.selection
    if selection.is_last:
        return selection.last_round
    if run.judged_by == ModelKind.PERSONAL and selection.per_client:
        return dict(selection.per_client)
    return selection.round


def comparison_rows(run_dirs: Sequence[Path], split: str = Split.TEST, metric: str = Field.DICE) -> list[dict[str, Any]]:
    """The numbers behind :func:`comparison_table`: one dict per method and site.

    Each method is scored with the model it is judged by (``judged_by`` of run_info.json or
    summary.json; inferred from the algorithm for older runs) on the selected checkpoint.

    Args:
        run_dirs: run directories.
        split: ``"test"`` (summary.json; else the test records) or ``"val"`` (validation at the
            selected round(s), or the latest validation round when no selection is recorded).
        metric: one of ``dice``, ``iou``, ``hd95``, ``precision``, ``recall``.

    Returns:
        Dicts with keys ``method`` (label), ``header`` (label and judged-by model), ``name``,
        ``algorithm``, ``algorithm_params``, ``model`` (the judged-by model), ``judged_by_declared``,
        ``selection`` (mode, None when not recorded), ``selected_rounds`` (per run), ``optimizer_state``,
        ``split``, ``metric``, ``site`` (a site, ``"mean"``: the mean over sites of each run, or
        ``"image_mean"``: the sites weighted by test n), ``mean`` and ``sd`` (over seeds, sample sd;
        None when fewer than two finite values, ``mean`` None when none), ``values`` (one per run),
        ``n_seeds``, ``seeds`` and ``runs`` (paths), in method-then-site order.

    Raises:
        ReportError: no run directories, an unknown metric or split, or a folder that is not a run.
    """
    groups, _ = _compare(load_runs(run_dirs), split, metric)
    return [row for g in groups for row in g.rows]


def _render_table(groups: Sequence[_Group], sites: Sequence[str], metric: str) -> str:
    decimals = DECIMALS[metric]
    lines = ["| site | " + " | ".join(md_cell(g.header) for g in groups) + " |", "|---|" + "---:|" * len(groups)]
    held_out = {r["site"] for g in groups for r in g.rows if r["held_out"]}
    for site in (*sites, SITE_MEAN, IMAGE_MEAN):
        cells = []
        for g in groups:
            row = next(r for r in g.rows if r["site"] == site)
            cells.append(fmt_mean_sd(row["mean"], row["sd"], decimals))
        label = _ROW_LABELS.get(site, md_cell(site)) + (" †" if site in held_out else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| seeds (n) | " + " | ".join(str(len(g.runs)) for g in groups) + " |")
    if held_out:
        lines += ["", "† never trained (in at least one run): scored with the method's unseen-site model, "
                  "left out of the means."]
    return "\n".join(lines) + "\n"


def comparison_table(run_dirs: Sequence[Path], split: str = Split.TEST, metric: str = Field.DICE) -> str:
    """A markdown table of ``metric`` per site (rows) and method (columns) over several runs.

    Column headers name the model each method is judged by, e.g. ``fedavg (global)`` and
    ``fedbn (personal)``. Cells are mean ± sd over the seeds of a method (sample sd, ddof=1; a
    single seed shows the value alone); the last rows are the site mean, the image mean (sites
    weighted by test n) and the number of seeds. See :func:`comparison_rows`.

    Returns:
        The table, ending with a newline.
    """
    groups, sites = _compare(load_runs(run_dirs), split, metric)
    return _render_table(groups, sites, metric)


def _traffic_table(groups: Sequence[_Group]) -> list[str]:
    lines = ["| method | up (MB) | down (MB) | total (MB) | ratio up | ratio down | ratio total | "
             "evaluation/personalize counted |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for g in groups:
        traffic = [run_traffic(r) for r in g.runs]
        totals = [t.total for t in traffic]
        mb = [fmt_mb(mean_sd([getattr(t, key) for t in totals])[0]) for key in ("up", "down", "total")]
        ratios = [fmt_ratio(mean_sd([t.ratios()[i] for t in totals])[0]) for i in range(3)]
        counted = "yes" if all(t.has_comm for t in traffic) else "no: training only"
        lines.append(f"| {md_cell(g.header)} | " + " | ".join(mb + ratios) + f" | {counted} |")
    return lines + ["", "Per run (mean over seeds), training plus every recorded evaluation and personalize "
                    "exchange; ratio = uncompressed (float32) / sent, – where the run does not record it.", ""]


def _methods_table(groups: Sequence[_Group], folder: Path) -> list[str]:
    lines = ["| method | algorithm | hyperparameters | judged by | selection | optimizer state | seeds | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for g in groups:
        links = []
        for run in g.runs:
            own = RunDir(run.root).report
            target = own if own.is_file() else run.root
            note = "" if own.is_file() else " (no report.md yet)"
            links.append(f"[{md_cell(run.root.name)}]({relpath(target, folder)}){note}")
        judged = model_words(g.judged_by) + ("" if all(r.judged_by_declared for r in g.runs) else " (inferred)")
        selections = "; ".join(md_cell(selection_short(r)) for r in g.runs)
        seeds = ", ".join(str(r.seed if r.seed is not None else "?") for r in g.runs)
        lines.append(
            f"| {md_cell(g.label)} | {g.first.algorithm} | {md_cell(fmt_params(g.first.hyperparams)) or DASH} "
            f"| {judged} | {selections} | {md_cell(optimizer_words(g.first))} | {seeds} | {', '.join(links)} |"
        )
    return lines + [""]


def write_comparison(run_dirs: Sequence[Path], out: Path) -> Path:
    """Write a comparison ``report.md`` (Dice, HD95, last-round Dice, traffic, methods) and
    ``dice_comparison.png``.

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
    runs = load_runs(run_dirs)
    dice_groups, sites = _compare(runs, Split.TEST, Field.DICE)
    hd_groups, _ = _compare(runs, Split.TEST, Field.HD95)
    last_groups, _ = _compare(runs, Split.TEST, Field.DICE, last=True)
    bars = [{r["site"]: r for r in g.rows} for g in dice_groups]
    plot = plot_comparison([g.header for g in dice_groups], bars, [*sites, SITE_MEAN, IMAGE_MEAN],
                           folder / "dice_comparison.png")
    lines = [
        f"# Comparison: {len(dice_groups)} method(s), {len(runs)} run(s)",
        "",
        "Test split. Each column is one method, scored with the model it is judged by, named in the header: "
        "`global` = its aggregated model, `personal` = each site's own personalised model (methods that keep "
        "local state: FedBN, FedPer, FedRep, Ditto, local-only), on the checkpoint selected on validation "
        "(see Methods). Runs with the same name, algorithm, hyperparameters, judged-by model, selection and "
        "optimizer policy are one method: cells are mean ± sd over its seeds (sample sd, ddof=1). *mean "
        "(sites)* averages the sites of each run, *mean (images)* weights them by their test n; then the "
        "seeds. – marks a missing or non-finite value.",
        "",
        "## Dice (higher is better)",
        "",
        _render_table(dice_groups, sites, Field.DICE),
        "## HD95 in mm (lower is better)",
        "",
        _render_table(hd_groups, sites, Field.HD95),
        "## Dice of the last round's model (shown beside, never chosen on)",
        "",
        _render_table(last_groups, sites, Field.DICE) if any(r.test_last_table() is not None for r in runs)
        else "Every run was tested on its last round's model (`eval.select: last`, or older runs): as above.\n",
        f"![Dice per site and method]({relpath(plot, folder)})",
        "",
        "## Communication",
        "",
        *_traffic_table(dice_groups),
        "## Methods",
        "",
        *_methods_table(dice_groups, folder),
    ]
    atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    logger.info("wrote %s", report)
    return report
