"""Benchmark plots: per-site test Dice bars with sd, Dice vs bytes, Dice vs training time.

matplotlib is imported when a plot is drawn (``fedseg bench --dry-run`` and the tables never need
it). Each plot is one PNG per dataset, written atomically; the error bars are the sample sd over
seeds (none below two seeds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedseg.io.atomic import atomic_open
from fedseg.records import Field
from fedseg.report.fmt import MB

__all__ = ["write_bench_plots"]

_MAX_BAR_SITES = 12


def _figure(title: str, xlabel: str, ylabel: str, wide: bool = False) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # renders with Agg whatever the backend is

    fig = Figure(figsize=(9 if wide else 6, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as handle:
        fig.savefig(handle, format="png")
    return path


def _color(i: int) -> Any:
    """The ``i``-th of 20 distinct colours (tab20), so up to 20 methods never share one."""
    from matplotlib import colormaps

    return colormaps["tab20"](i % 20)


def _err(sd: float | None) -> float:
    return 0.0 if sd is None else sd


def _site_bars(dataset: str, rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    sites = sorted({k[5:] for r in rows for k in r if k.startswith("site:")})
    fig, ax = _figure(f"{dataset}: test Dice per site (mean ± sd over seeds)", "site", "Dice", wide=True)
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        means = [r.get(f"site:{s}", (None, None))[0] for s in sites]
        sds = [_err(r.get(f"site:{s}", (None, None))[1]) for s in sites]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(sites))]
        ax.bar(xs, [m if m is not None else 0.0 for m in means], width, yerr=sds, capsize=2, label=str(r["method"]),
               color=_color(i))
    ax.set_xticks(range(len(sites)))
    ax.set_xticklabels(sites, rotation=15, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=max(1, len(rows) // 8 + 1), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _scatter(dataset: str, rows: Sequence[Mapping[str, Any]], key: str, scale: float, xlabel: str,
             path: Path) -> Path | None:
    points = [(r, r[key][0], r[Field.DICE][0]) for r in rows if r[key][0] is not None and r[Field.DICE][0] is not None]
    if not points:
        return None
    fig, ax = _figure(f"{dataset}: test Dice (site mean) vs {xlabel}", xlabel, "Dice (site mean)")
    for i, (r, x, y) in enumerate(points):
        ax.errorbar([x / scale], [y], xerr=[_err(r[key][1]) / scale], yerr=[_err(r[Field.DICE][1])], fmt="o",
                    capsize=2, label=str(r["method"]), color=_color(i))
        ax.annotate(str(r["method"]), (x / scale, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if min(x for _, x, _ in points) > 0:
        ax.set_xscale("log")
    return _save(fig, path)


def write_bench_plots(rows: Sequence[Mapping[str, Any]], folder: Path) -> dict[str, Path]:
    """Three PNGs per dataset under ``folder``: ``<dataset>_sites.png`` (up to 12 sites), ``<dataset>_bytes.png``,
    ``<dataset>_time.png`` (the last two only with figures to plot). Returns name -> path."""
    written: dict[str, Path] = {}
    for dataset in dict.fromkeys(str(r["dataset"]) for r in rows):
        members = [r for r in rows if r["dataset"] == dataset]
        sites = {k for r in members for k in r if k.startswith("site:")}
        if len(sites) <= _MAX_BAR_SITES:  # beyond, bars are unreadable: the CSVs hold every site
            written[f"{dataset}_sites"] = _site_bars(dataset, members, folder / f"{dataset}_sites.png")
        for name, key, scale, label in (("bytes", "bytes_total", MB, "MB sent (up + down)"),
                                        ("time", "train_seconds", 1.0, "seconds of rounds (wall time)")):
            path = _scatter(dataset, members, key, scale, label, folder / f"{dataset}_{name}.png")
            if path is not None:
                written[f"{dataset}_{name}"] = path
    return written
