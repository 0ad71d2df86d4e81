"""PNG plots of one run (validation Dice, loss, bytes, aggregation weights) and of a comparison.

Plots draw on :class:`matplotlib.figure.Figure` objects and are written atomically (temp file in
the same folder, then rename), so a report can be regenerated while a run is still writing.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedseg.io.atomic import atomic_open
from fedseg.io.packages import require
from fedseg.records import SERVER, Field, Kind, ModelKind, Split
from fedseg.report.fmt import MB, finite
from fedseg.report.runs import RunRecords
from fedseg.report.traffic import run_traffic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PLOTS", "plot_comparison", "write_run_plots"]

_PNG_DPI = 100


def _save_png(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to ``path`` atomically (:func:`fedseg.io.atomic.atomic_open`)."""
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png", dpi=_PNG_DPI, bbox_inches="tight")
    return path


def _mpl() -> Any:
    """matplotlib, imported on first use (the ``[report]`` extra; a SuperNode installs none).

    Headless (CI, servers) rendering. Switching the backend after pyplot is loaded would close
    the caller's open figures (e.g. in a notebook), so only pick it when pyplot is not in use;
    the plots below draw on Figure objects, which render with Agg whatever the backend is.
    """
    mpl = require("matplotlib", what="the report's plots")
    if "matplotlib.pyplot" not in sys.modules:
        mpl.use("Agg")
    return mpl


def _new_axes(title: str, ylabel: str) -> tuple[Figure, Any]:
    _mpl()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    return fig, ax


def _colors() -> list[str]:
    return list(_mpl().rcParams["axes.prop_cycle"].by_key().get("color", ["C0"]))


def _series(records: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    """``{round: mean of record[key]}`` over the finite values of each round."""
    values: dict[int, list[float]] = {}
    for r in records:
        v = finite(r.get(key))
        if v is not None:
            values.setdefault(int(r.get(Field.ROUND, 0)), []).append(v)
    return {rnd: statistics.fmean(vs) for rnd, vs in sorted(values.items())}


def _plot_dice(run: RunRecords, path: Path) -> Path | None:
    val = run.evals(Split.VAL)
    if not val:
        return None
    sites = run.sites

    def curves(model: str) -> dict[str, dict[int, float]]:
        by_site = {s: _series([r for r in val if r.get(Field.MODEL) == model and r.get(Field.SITE) == s], Field.DICE)
                   for s in sites}
        return {s: c for s, c in by_site.items() if c}

    global_curves, personal_curves = curves(ModelKind.GLOBAL), curves(ModelKind.PERSONAL)
    # FedAvg-like methods record the global metrics again as "personal": draw them once.
    show_personal = not global_curves or personal_curves != global_curves
    judged = run.judged_by
    fig, ax = _new_axes(f"Validation Dice per site (judged by: {judged} model)", "Dice")
    colors = _colors()
    selection = run.selection
    for i, site in enumerate(sites):
        color = colors[i % len(colors)]
        for model, drawn, style in ((ModelKind.GLOBAL, global_curves, "-o"), (ModelKind.PERSONAL, personal_curves, "--s")):
            if site not in drawn or (model == ModelKind.PERSONAL and not show_personal):
                continue
            xs, ys = zip(*drawn[site].items())
            line_style = style if global_curves else "-o"
            ax.plot(xs, ys, line_style, color=color, label=f"{site} ({model})",
                    alpha=1.0 if model == judged else 0.5)
            chosen = selection.round_for(model, site) if selection.recorded and not selection.is_last else None
            if chosen in drawn[site] and model == judged:
                ax.plot([chosen], [drawn[site][chosen]], "*", color=color, markersize=14)
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize="small")
    return _save_png(fig, path)


def _plot_loss(run: RunRecords, path: Path) -> Path | None:
    train = [r for r in run.by_kind(Kind.TRAIN) if r.get(Field.SITE) != SERVER]
    curves = {c: _series([r for r in train if r.get(Field.SITE) == c], Field.LOSS)
              for c in dict.fromkeys(str(r.get(Field.SITE)) for r in train)}
    curves = {c: curve for c, curve in curves.items() if curve}
    if not curves:  # no training, or no loss released (DP-SGD keeps it on the sites)
        return None
    fig, ax = _new_axes("Mean training loss per site", "loss")
    for client, curve in curves.items():
        xs, ys = zip(*curve.items())
        ax.plot(xs, ys, "-o", label=client)
    ax.legend(fontsize="small")
    return _save_png(fig, path)


def _plot_bytes(run: RunRecords, path: Path) -> Path | None:
    rounds = run.by_kind(Kind.ROUND)
    if not rounds:
        return None
    fig, ax = _new_axes("Communication per round", "MB")
    for key, label in ((Field.BYTES_UP, "training up (clients → server)"),
                       (Field.BYTES_DOWN, "training down (server → clients)")):
        curve = _series(rounds, key)
        if curve:
            xs, ys = zip(*curve.items())
            ax.plot(xs, [y / MB for y in ys], "-o", label=label)
    traffic = run_traffic(run)
    if traffic.has_comm:
        xs, ys = zip(*((rnd, t.total / MB) for rnd, t in traffic.per_round.items()))
        ax.plot(xs, ys, "--", color="black", label="total, evaluation and personalize included")
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize="small")
    return _save_png(fig, path)


def _plot_weights(run: RunRecords, path: Path) -> Path | None:
    """Aggregation weight of every client per round (``kind: "weights"`` records, e.g. AAM), with
    the FedAvg weight ``n_k/N`` dotted when the records carry it."""
    weights = run.by_kind(Kind.WEIGHTS)
    if not weights:
        return None
    sites = list(dict.fromkeys(str(r.get(Field.SITE)) for r in weights))
    fig, ax = _new_axes("Aggregation weight per client", "weight")
    colors = _colors()
    for i, site in enumerate(sites):
        rows = [r for r in weights if r.get(Field.SITE) == site]
        color = colors[i % len(colors)]
        for key, style, label in ((Field.WEIGHT, "-o", site), (Field.FEDAVG_WEIGHT, ":", f"{site} (n_k/N)")):
            curve = _series(rows, key)
            if curve:
                xs, ys = zip(*curve.items())
                ax.plot(xs, ys, style, color=color, label=label)
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize="small")
    return _save_png(fig, path)


PLOTS: dict[str, tuple[str, str]] = {
    "dice": ("dice_per_site.png", "Validation Dice per site"),
    "loss": ("loss.png", "Training loss"),
    "bytes": ("bytes.png", "Communication"),
    "weights": ("weights.png", "Aggregation weights"),
}
"""``{key: (file name under plots/, caption)}`` of the per-run plots."""


def write_run_plots(run: RunRecords, folder: Path) -> dict[str, Path]:
    """Write the run's plots that have data into ``folder``; ``{key: path}`` of those written."""
    makers = {"dice": _plot_dice, "loss": _plot_loss, "bytes": _plot_bytes, "weights": _plot_weights}
    written: dict[str, Path] = {}
    for key, (name, _) in PLOTS.items():
        path = makers[key](run, folder / name)
        if path is not None:
            written[key] = path
    return written


def plot_comparison(labels: Sequence[str], rows: Sequence[Mapping[str, Mapping[str, Any]]],
                    sites: Sequence[str], path: Path) -> Path:
    """Bars of mean Dice (± sd) per site and method.

    Args:
        labels: one label per method.
        rows: per method, ``{site: {"mean": ..., "sd": ...}}`` for every site of ``sites``.
        sites: the x axis (sites, then the mean rows).
        path: the PNG to write.
    """
    _mpl()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.2 * len(sites) * max(1, len(labels)) / 2), 4))
    ax = fig.add_subplot()
    xs = list(range(len(sites)))
    width = 0.8 / max(1, len(labels))
    for i, (label, by_site) in enumerate(zip(labels, rows)):
        heights = [finite(by_site[s].get("mean")) or 0.0 for s in sites]
        errors = [finite(by_site[s].get("sd")) or math.nan for s in sites]
        offsets = [x - 0.4 + width * (i + 0.5) for x in xs]
        ax.bar(offsets, heights, width, yerr=errors, capsize=3, label=label)
    ax.set_xticks(xs)
    ax.set_xticklabels(list(sites))
    ax.set_ylabel("Dice")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Test Dice per site and method (judged-by model, selected checkpoint)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save_png(fig, path)
