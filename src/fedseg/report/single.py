"""``report.md`` of one run: method, data, test results, model selection, communication, plots.

The results show every evaluated model (global, personalised, unseen-site) and mark the one the
method is judged by; each on the selected checkpoint, with the last round's test figures beside
it. Without ``summary.json`` (the run has not finished) the tables show the latest validation
round instead, and say so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any

from fedseg.engine.privacy import privacy_words
from fedseg.engine.rundir import RunDir, atomic_write_text
from fedseg.records import SERVER, Field, InfoKey, Kind, ModelKind, Selection, Split
from fedseg.report.fmt import (
    DASH,
    DECIMALS,
    HEADERS,
    METRICS,
    fence,
    finite,
    fmt,
    fmt_int,
    fmt_mb,
    fmt_mean_sd,
    fmt_params,
    fmt_ratio,
    fmt_seconds,
    image_mean,
    md_cell,
    mean_sd,
    relpath,
    site_mean,
)
from fedseg.report.overlays import overlay_section
from fedseg.report.plots import PLOTS, write_run_plots
from fedseg.report.runs import MODEL_ORDER, MetricTable, RunRecords, SelectionInfo, same_metrics
from fedseg.report.traffic import Traffic, run_traffic

__all__ = ["model_words", "optimizer_words", "selection_short", "selection_words", "write_report"]

logger = logging.getLogger(__name__)

_MODEL_WORDS: dict[str, str] = {
    ModelKind.GLOBAL: "global model",
    ModelKind.PERSONAL: "personalised models (each site's own)",
    ModelKind.UNSEEN: "unseen-site model",
}
_OPTIMIZER_WORDS = {"reset": "a fresh optimizer every round", "persist": "optimizer state kept across rounds"}


def model_words(model: str) -> str:
    return _MODEL_WORDS.get(model, f"{model} model")


def optimizer_words(run: RunRecords) -> str:
    """The run's optimizer policy in words, saying where it was read from."""
    policy = run.optimizer_state
    if policy is None:
        return "not recorded"
    words = f"`{policy}`: {_OPTIMIZER_WORDS[policy]}" if policy in _OPTIMIZER_WORDS else f"`{policy}`"
    return words if run.optimizer_state_declared else f"{words} (from config.yaml `train.optimizer_state`)"


def _rounds_of(selection: SelectionInfo, run: RunRecords) -> str:
    parts = []
    if selection.round is not None and run.has_global_model:
        parts.append(f"global model round {selection.round}")
    if selection.per_client:
        parts.append("personalised: " + ", ".join(f"{s} {r}" for s, r in selection.per_client.items()))
    return "; ".join(parts)


def selection_words(run: RunRecords) -> str:
    """Which checkpoint was tested, in words."""
    selection = run.selection
    last = selection.last_round
    of = f" of {run.planned_rounds}" if run.planned_rounds else ""
    if not selection.recorded:
        return (f"not recorded (the run predates `eval.select`): the test split was scored on the last round's "
                f"model (round {last if last is not None else '?'}{of})")
    if selection.mode == Selection.LAST:
        return f"last round (`eval.select: last`), round {last if last is not None else '?'}{of}"
    rounds = _rounds_of(selection, run)
    return "best validation round (`eval.select: best_val`)" + (f": {rounds}" if rounds else "")


def selection_short(run: RunRecords) -> str:
    """Which checkpoint was tested, in a few words (for a table cell)."""
    selection = run.selection
    last = selection.last_round if selection.last_round is not None else "?"
    if not selection.recorded:
        return f"last round {last} (not recorded: older run)"
    if selection.mode == Selection.LAST:
        return f"last round {last}"
    return f"best_val: {_rounds_of(selection, run) or '?'}"


# ---------------------------------------------------------------------------------- sections


def _method_section(run: RunRecords) -> list[str]:
    judged = run.judged_by
    source = ("recorded by the run" if run.judged_by_declared
              else f"not recorded (older run): inferred from {run.algorithm}")
    lines = ["## Method", "", "| | |", "|---|---|",
             f"| judged by | **{model_words(judged)}** ({source}) |",
             f"| model selection | {selection_words(run)} |",
             f"| optimizer state | {optimizer_words(run)} |"]
    if run.unseen_policy:
        lines.append(f"| on a site that never trained | {md_cell(run.unseen_policy)} |")
    if dp := privacy_words(run.summary, run.records):
        lines.append(f"| privacy | {md_cell(dp)} |")
    return lines + [""]


def _data_section(run: RunRecords) -> list[str]:
    data, federation = run.config.get("data"), run.config.get("federation")
    facts = []
    if isinstance(data, Mapping) and data.get("source"):
        facts.append(f"source {data['source']}")
    for key, text in ((InfoKey.SPATIAL_DIMS, "{}D"), (InfoKey.NUM_CLASSES, "{} classes (incl. background)"),
                      (InfoKey.IN_CHANNELS, "{} input channel(s)")):
        if run.info.get(key):
            facts.append(text.format(run.info[key]))
    if isinstance(federation, Mapping) and federation:
        facts.append(f"{federation.get('rounds', '?')} rounds, fraction {federation.get('fraction', '?')}, "
                     f"{federation.get('local_epochs', '?')} local epoch(s)")
    if InfoKey.SEED in run.info:
        facts.append(f"seed {run.info[InfoKey.SEED]}")
    if run.info.get(InfoKey.DEVICE):
        facts.append(f"device {run.info[InfoKey.DEVICE]}")
    lines = ["## Data", ""] + ([" · ".join(facts), ""] if facts else [])
    if run.info.get(InfoKey.POOLED_DATA):
        lines += ["Pooled (centralised) training: one client holds every site's training data.", ""]
    train_n = {str(r.get(Field.SITE)): r.get(Field.N) for r in run.by_kind(Kind.TRAIN) if r.get(Field.SITE) != SERVER}
    val, _ = run.val_table(at_selection=False)
    test = run.test_table()

    def split_n(table: MetricTable, site: str) -> str:
        for model in MODEL_ORDER:
            if site in table.get(model, {}):
                return fmt_int(table[model][site].get(Field.N))
        return DASH

    clients = [str(c) for c in run.info.get(InfoKey.CLIENTS, [])]
    rows = run.sites + [c for c in (*clients, *train_n) if c not in run.sites]
    lines += ["| site | train n | val n | test n |", "|---|---:|---:|---:|"]
    for site in dict.fromkeys(rows):
        lines.append(f"| {md_cell(site)} | {fmt_int(train_n.get(site))} | {split_n(val, site)} | {split_n(test, site)} |")
    return lines + [""]


def _site_table(sites: Sequence[str], per_site: Mapping[str, Mapping[str, Any]],
                rounds: Mapping[str, int | None] | None = None, held_out: Set[str] = frozenset()) -> list[str]:
    """Rows per site, then the site mean (± sd across sites) and the image mean (weighted by n)
    over the sites that trained (held-out sites are marked † and left out of the means)."""
    with_round = rounds is not None
    head = "| site | " + ("round | " if with_round else "") + "n | " + " | ".join(HEADERS[m] for m in METRICS) + " |"
    lines = [head, "|---|" + ("---:|" if with_round else "") + "---:|" + "---:|" * len(METRICS)]
    shown = [s for s in sites if s in per_site] + [s for s in per_site if s not in sites]
    for site in shown:
        m = per_site[site]
        rnd = f"{fmt_int((rounds or {}).get(site))} | " if with_round else ""
        cells = [fmt(m.get(k), DECIMALS[k]) for k in METRICS]
        mark = " †" if site in held_out else ""
        lines.append(f"| {md_cell(site)}{mark} | {rnd}{fmt_int(m.get(Field.N))} | " + " | ".join(cells) + " |")
    kept = {s: per_site[s] for s in shown if s not in held_out}
    ns = [finite(m.get(Field.N)) for m in kept.values()]
    total_n = fmt_int(sum(n for n in ns if n is not None)) if ns and all(n is not None for n in ns) else DASH
    blank = "| " if with_round else ""
    means = [fmt_mean_sd(*mean_sd([m.get(k) for m in kept.values()]), DECIMALS[k]) for k in METRICS]
    weighted = [fmt(image_mean(kept, k), DECIMALS[k]) for k in METRICS]
    lines.append(f"| **mean (sites)** | {blank}{total_n} | " + " | ".join(means) + " |")
    lines.append(f"| **mean (images)** | {blank}{total_n} | " + " | ".join(weighted) + " |")
    if any(s in held_out for s in shown):
        lines += ["", "† never trained: left out of the means (see the unseen-site model)."]
    return lines


_TABLE_NOTE = ("*mean (sites)*: mean ± sd across sites (sample sd, ddof=1); *mean (images)*: sites weighted by "
               "their number of test cases n; n: total cases. Non-finite values (e.g. HD95 of an empty "
               "prediction) are left out of the means and shown as –.")


def _model_note(run: RunRecords, model: str, table: MetricTable) -> str | None:
    """Why a model's table is not shown, or a caveat above it; None to show it plainly."""
    judged = run.judged_by
    if model == ModelKind.GLOBAL and not run.has_global_model:
        return f"No global model: {run.algorithm} trains one model per site (see the personalised models)."
    if model == ModelKind.PERSONAL and judged == ModelKind.GLOBAL and ModelKind.GLOBAL in table \
            and model in table and same_metrics(table[model], table[ModelKind.GLOBAL]):
        return (f"Identical to the global model: {run.algorithm} keeps no local parameters, "
                "so each site's personalised model is the global model.")
    if model not in table:
        if model == judged:
            return (f"**Missing**: {run.algorithm} is judged by its {model_words(model)}, but the run has no such "
                    "metrics (personalised evaluation off, or the run stopped); no other model stands in for them.")
        return None if model == ModelKind.UNSEEN else "Not evaluated (personalised evaluation off, or pooled training)."
    return None


def _ordered_models(run: RunRecords, table: MetricTable) -> list[str]:
    judged = run.judged_by
    models = [judged] + [m for m in MODEL_ORDER if m != judged and (m in table or m != ModelKind.UNSEEN)]
    return models + [m for m in table if m not in models]


def _model_tables(run: RunRecords, table: MetricTable, title: str, finished: bool) -> list[str]:
    out: list[str] = []
    judged, selection = run.judged_by, run.selection
    for model in _ordered_models(run, table):
        mark = " — **judged by**" if model == judged else ""
        out += [f"### {title}: {model_words(model)}{mark}", ""]
        note = _model_note(run, model, table)
        if note is not None:
            out += [note, ""]
            continue
        if model == ModelKind.GLOBAL and judged == ModelKind.PERSONAL:
            out += [f"Reference only, not {run.algorithm}'s result: the method is judged by its personalised "
                    "models, and parameters it keeps local are never aggregated into this model.", ""]
        if model == ModelKind.UNSEEN and run.unseen_policy:
            out += [f"The model {run.algorithm} uses on a site that never trained: {md_cell(run.unseen_policy)}.", ""]
        rounds = {s: selection.round_for(model, s) for s in table[model]} if finished else None
        held_out = frozenset() if model == ModelKind.UNSEEN else run.held_out  # all held out: its own mean
        out += _site_table(run.sites, table[model], rounds, held_out) + [""]
    return out


def _selected_vs_last(run: RunRecords, table: MetricTable) -> list[str]:
    out = ["### Selected checkpoint vs. last round (test Dice)", ""]
    last = run.test_last_table()
    selection = run.selection
    if last is None:
        why = "`eval.select: last`" if selection.recorded else "the run predates `eval.select`"
        return out + [f"The tested checkpoint is the last round's ({why}): the figures above are the last "
                      "round's.", ""]
    models = [m for m in _ordered_models(run, table) if m in table and _model_note(run, m, table) is None]
    head = "| site | " + " | ".join(f"{model_words(m)}: selected | last round" for m in models) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(models)]
    sites = [s for s in run.sites if any(s in table[m] for m in models)]
    for site in sites:
        cells = [f"{fmt(table[m].get(site, {}).get(Field.DICE), 3)} | {fmt(last.get(m, {}).get(site, {}).get(Field.DICE), 3)}"
                 for m in models]
        lines.append(f"| {md_cell(site)}{' †' if site in run.held_out else ''} | " + " | ".join(cells) + " |")
    held_out = run.held_out

    def kept(model: str, per_site: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The sites a model's means cover: those that trained (all, for the unseen-site model)."""
        return {s: m for s, m in per_site.items() if model == ModelKind.UNSEEN or s not in held_out}

    for label, mean in (("mean (sites)", site_mean), ("mean (images)", image_mean)):
        cells = [f"{fmt(mean(kept(m, table[m]), Field.DICE), 3)} | {fmt(mean(kept(m, last.get(m, {})), Field.DICE), 3)}"
                 for m in models]
        lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
    return out + lines + ["", "The last round's model is shown beside the selected one, never chosen on.", ""]


def _results_section(run: RunRecords) -> list[str]:
    table = run.test_table()
    if run.finished and table:
        out = ["## Test results", "", f"Scored on the selected checkpoint: {selection_words(run)}.", ""]
        out += _model_tables(run, table, "Test", finished=True)
        out += _selected_vs_last(run, table)
        unevaluated = [s for s in run.sites if not any(s in table.get(m, {}) for m in MODEL_ORDER)]
        split = Split.TEST
    else:
        table, rnd = run.val_table(at_selection=False)
        if not table:
            return ["## Results", "", "> **Run not finished**: no test or validation metrics yet.", ""]
        of = f" of {run.planned_rounds}" if run.planned_rounds else ""
        out = [f"## Validation results (round {rnd}{of})", "",
               f"> **Run not finished** (no summary.json): showing the latest validation round, {rnd}{of}, "
               "instead of test metrics.", ""]
        out += _model_tables(run, table, "Validation", finished=False)
        unevaluated = [s for s in run.sites if not any(s in table.get(m, {}) for m in MODEL_ORDER)]
        split = Split.VAL
    if unevaluated:
        # e.g. a weakly-labelled site without any mask: it trains but has no val/test case
        out += [f"Not evaluated (no {split} case): {', '.join(md_cell(s) for s in unevaluated)}; left out of the "
                "tables and their means (see the Data table).", ""]
    return out + [_TABLE_NOTE, ""]


def _val_mean(by_site: Mapping[str, float | None]) -> str:
    return fmt(mean_sd(list(by_site.values()))[0], 3)


def _selection_section(run: RunRecords) -> list[str]:
    lines = ["## Model selection", ""]
    selection = run.selection
    if selection.is_last:
        return lines + [f"Test split scored on: {selection_words(run)}.", ""]
    lines += ["The checkpoint is chosen on validation Dice (mean over sites for the global model, each "
              "client's own for personalised models); test data never influences the choice.", ""]
    last = selection.last_round
    if selection.round is not None and run.has_global_model:
        by_round = run.val_dice_by_round(ModelKind.GLOBAL)
        chosen = by_round.get(selection.round, {})
        final = by_round.get(last, {}) if last is not None else {}
        lines += [f"Global model: round **{selection.round}** of {last}, mean validation Dice "
                  f"**{_val_mean(chosen)}** (last round: {_val_mean(final)}).", ""]
    if selection.per_client:
        by_round = run.val_dice_by_round(ModelKind.PERSONAL)
        lines += ["| site | selected round | validation Dice there | at the last round |", "|---|---:|---:|---:|"]
        for site, rnd in selection.per_client.items():
            there = by_round.get(rnd, {}).get(site)
            at_last = by_round.get(last, {}).get(site) if last is not None else None
            lines.append(f"| {md_cell(site)} | {rnd} | {fmt(there, 3)} | {fmt(at_last, 3)} |")
        lines.append("")
    return lines


def _traffic_row(label: str, t: Traffic) -> str:
    ratios = " | ".join(fmt_ratio(r) for r in t.ratios())
    return f"| {label} | {fmt_mb(t.up)} | {fmt_mb(t.down)} | {fmt_mb(t.total)} | {ratios} |"


def _communication(run: RunRecords) -> list[str]:
    traffic = run_traffic(run)
    lines = ["## Communication and time", ""]
    n = traffic.rounds
    if not n:
        return lines + ["No completed rounds.", ""]
    total = traffic.total
    lines += ["| exchange | up (MB) | down (MB) | total (MB) | ratio up | ratio down | ratio total |",
              "|---|---:|---:|---:|---:|---:|---:|",
              _traffic_row(f"training, {n} round(s)", traffic.training),
              _traffic_row("training, per round", traffic.training.scaled(1 / n))]
    lines += [_traffic_row(md_cell(label), t) for label, t in traffic.phases.items()]
    lines += [_traffic_row("**run total**", total), _traffic_row("**run total, per round**", total.scaled(1 / n)), ""]
    notes = ["MB = 10^6 bytes, summed over clients; ratio = the same messages uncompressed (float32) / bytes sent."]
    if not traffic.has_comm:
        notes.append("Evaluation and personalize exchanges are not recorded (the run predates `comm` records): "
                     "the run total covers training only.")
    if total.total_raw is None:
        notes.append("Uncompressed sizes are not recorded for every exchange (the run predates `bytes_*_raw`): "
                     "ratios are –.")
    rounds = run.by_kind(Kind.ROUND)
    wall = sum(finite(r.get(Field.SECONDS)) or 0.0 for r in rounds)
    overhead = sum(finite(r.get(Field.OVERHEAD_SECONDS)) or 0.0 for r in rounds)
    lines += [" ".join(notes), "",
              "| time | total | per round |", "|---|---:|---:|",
              f"| wall time | {fmt_seconds(wall)} | {fmt_seconds(wall / n)} |",
              f"| server overhead | {fmt_seconds(overhead)} | {fmt_seconds(overhead / n)} |", "",
              "Wall time: sum of round times (client training, serialisation, aggregation; validation and test "
              "excluded). Server overhead: serialise + aggregate + broadcast.", ""]
    return lines


def _failures_section(run: RunRecords, limit: int = 20) -> list[str]:
    """Clients that failed and updates the server rejected (``failure`` / ``rejected`` lines): a
    count per site, then the first ``limit`` events with their reasons. Nothing when there were none."""
    events = [r for r in run.records if r.get(Field.KIND) in (Kind.FAILURE, Kind.REJECTED)]
    if not events:
        return []
    counts: dict[str, dict[str, int]] = {}
    for r in events:
        site = counts.setdefault(str(r.get(Field.SITE)), {Kind.FAILURE.value: 0, Kind.REJECTED.value: 0})
        site[str(r[Field.KIND])] += 1
    per_site = ", ".join(f"{md_cell(s)}: {c[Kind.FAILURE]} failed, {c[Kind.REJECTED]} rejected"
                         for s, c in sorted(counts.items()))
    lines = ["## Failures and rejected updates", "",
             f"{len(events)} event(s) ({per_site}). A failed client (it raised, timed out or disconnected) or a "
             "rejected update (docs/reliability.md) is left out of that round; the round went on with the others.",
             "", "| round | site | phase | event | reason |", "|---:|---|---|---|---|"]
    for r in events[:limit]:
        phase = str(r.get(Field.PHASE, "")) + (f" ({r[Field.SPLIT]})" if r.get(Field.SPLIT) else "")
        lines.append(f"| {r.get(Field.ROUND)} | {md_cell(str(r.get(Field.SITE)))} | {md_cell(phase)} | "
                     f"{r[Field.KIND]} | {md_cell(str(r.get(Field.REASON, '')))} |")
    if len(events) > limit:
        lines.append(f"| | | | | … {len(events) - limit} more in metrics.jsonl |")
    return lines + [""]


def _render_report(run: RunRecords, plots: Mapping[str, Path]) -> str:
    params = fmt_params(run.hyperparams)
    lines = [f"# {run.name} — {run.algorithm}" + (f" ({params})" if params else ""), ""]
    lines += ["## Command", "", fence(run.command) if run.command else "(command.txt missing)", ""]
    lines += _method_section(run)
    lines += _data_section(run)
    lines += _results_section(run)
    lines += _selection_section(run)
    lines += _failures_section(run)
    lines += _communication(run)
    lines += overlay_section(run.root)
    if plots:
        lines += ["## Plots", ""]
        for key, path in plots.items():
            lines += [f"![{PLOTS[key][1]}]({relpath(path, run.root)})", ""]
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
    run = RunRecords.load(Path(run_dir))
    rd = RunDir(run.root)
    plots = write_run_plots(run, rd.plots)
    atomic_write_text(rd.report, _render_report(run, plots))
    logger.info("wrote %s", rd.report)
    return rd.report
