"""Benchmark results: one record per finished run, one row per dataset x method, CSV and markdown.

:func:`read_run` reads a run directory's ``summary.json`` (the test scores of the model the method
is judged by, on the checkpoint chosen on validation), its ``round`` records (seconds) and the
``bench.json`` the suite runner writes beside them (the child process's peak RSS). :func:`aggregate`
groups the runs of a dataset x method over seeds (mean and sample sd, ddof 1); :func:`summary_csv`
writes every digit, :func:`results_markdown` rounds. A row with fewer than
:data:`MIN_SEEDS` seeds shows the mean alone, marked ``n=<k>``: it claims no spread.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedseg.engine.rundir import read_metrics
from fedseg.records import BytesKey, Field, Kind, ModelKind, SummaryKey
from fedseg.report.fmt import DASH, DECIMALS, HEADERS, MB, METRICS, fmt_mean_sd, image_mean, mean_sd, site_mean
from fedseg.report.runs import ReportError, configured_train_sites

__all__ = ["BENCH_FILE", "MIN_SEEDS", "MAX_SITE_COLUMNS", "RUN_COLUMNS", "read_run", "aggregate", "runs_csv", "summary_csv",
           "results_markdown"]

BENCH_FILE = "bench.json"
"""Written by the suite runner into each run directory: ``{"peak_rss_mb", "wall_seconds"}``."""
MIN_SEEDS = 3
MAX_SITE_COLUMNS = 8
"""Markdown tables show per-site Dice columns up to this many sites (all sites stay in the CSVs)."""
_COSTS = ("dice_image", "bytes_up", "bytes_down", "bytes_total", "round_seconds", "train_seconds", "overhead_share",
          "not_training_share", "peak_rss_mb", "loso_dice", "unseen_dice", "unseen_hd95")
RUN_COLUMNS = ("dataset", "method", "seed", "algorithm", "model", "selected_round", "rounds", *METRICS, *_COSTS)


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path}: not a JSON mapping")
    return value


def read_run(run_dir: Path, dataset: str, method: str, seed: int) -> dict[str, Any]:
    """One finished run as a flat record (keys :data:`RUN_COLUMNS` plus ``sites``: {site: metrics}).

    The metrics are the site means of the judged-by model's test scores on the sites that trained
    (a global model's scores on held-out sites are left out of them); ``unseen_dice`` and
    ``unseen_hd95`` are the means of the ``unseen`` model's test scores on the sites that did not
    train (None when there are none).

    Raises:
        ReportError: no readable ``summary.json``.
    """
    summary = _json(run_dir / "summary.json")
    judged = str(summary.get(SummaryKey.JUDGED_BY, ModelKind.GLOBAL))
    test = summary.get(SummaryKey.TEST, {})
    unseen_all: dict[str, dict[str, Any]] = dict(test.get(ModelKind.UNSEEN, {}))
    scored: dict[str, dict[str, Any]] = dict(test.get(judged, {}))
    # the judged model's scores on the sites that trained (federation.train_sites): a global model
    # is also tested on the held-out sites, which belong to the unseen-site columns, not its site mean
    trained = configured_train_sites(run_dir)
    sites = scored if trained is None or judged == ModelKind.UNSEEN else {s: m for s, m in scored.items() if s in trained}
    unseen = {s: m for s, m in unseen_all.items() if s not in sites}
    rounds = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get(Field.KIND) == Kind.ROUND and Field.SECONDS in r]
    seconds = [float(r[Field.SECONDS]) for r in rounds]
    overhead = [float(r[Field.OVERHEAD_SECONDS]) for r in rounds if Field.OVERHEAD_SECONDS in r]
    local = sum(float(r[Field.SECONDS]) for r in read_metrics(run_dir / "metrics.jsonl")
                if r.get(Field.KIND) == Kind.TRAIN and Field.SECONDS in r)
    extra = _json(run_dir / BENCH_FILE) if (run_dir / BENCH_FILE).is_file() else {}
    traffic = summary.get(SummaryKey.BYTES, {})
    record: dict[str, Any] = {
        "dataset": dataset, "method": method, "seed": seed, "algorithm": summary.get(SummaryKey.ALGORITHM),
        "model": judged, "selected_round": summary.get(SummaryKey.SELECTION, {}).get("round"),
        "rounds": summary.get(SummaryKey.ROUNDS), "sites": sites,
        **{m: site_mean(sites, m) for m in METRICS},
        "dice_image": summary.get(SummaryKey.MEAN, {}).get(judged, {}).get("dice_image") if sites == scored
        else image_mean(sites, Field.DICE),
        "bytes_up": traffic.get(BytesKey.UP), "bytes_down": traffic.get(BytesKey.DOWN),
        "bytes_total": traffic.get(BytesKey.TOTAL),
        "round_seconds": sum(seconds) / len(seconds) if seconds else None,
        "train_seconds": sum(seconds) if seconds else None,
        # the server's share of a round (``overhead_seconds``: broadcast encode, update decode and
        # screening, aggregation; not the clients' side of the wire, model reset or seeding)
        "overhead_share": sum(overhead) / sum(seconds) if overhead and len(overhead) == len(seconds) and sum(seconds) > 0
        else None,
        # everything but local training (1 - local training / round time); clients run one after
        # another in-process, so None where they overlap (Flower: the sum of trainings exceeds the round)
        "not_training_share": 1.0 - local / sum(seconds) if seconds and sum(seconds) > 0 and 0 < local <= sum(seconds)
        else None,
        "peak_rss_mb": extra.get("peak_rss_mb"),
        "loso_dice": None,
        "unseen_dice": site_mean(unseen, Field.DICE) if unseen else None,
        "unseen_hd95": site_mean(unseen, Field.HD95) if unseen else None,
    }
    return record


def aggregate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, method), in first-seen order: ``{key: (mean, sd)}`` for every metric
    and cost, ``site:<name>`` and ``hd95:<name>``: (mean, sd) per site's Dice and HD95, ``seeds``,
    ``model``, ``algorithm``."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault((str(r["dataset"]), str(r["method"])), []).append(r)
    rows = []
    for (dataset, method), members in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "method": method, "seeds": len(members),
                               "algorithm": members[0].get("algorithm"), "model": members[0].get("model")}
        for key in (*METRICS, *_COSTS):
            row[key] = mean_sd([m.get(key) for m in members])
        sites = sorted({s for m in members for s in m.get("sites", {})})
        for site in sites:
            row[f"site:{site}"] = mean_sd([m.get("sites", {}).get(site, {}).get(Field.DICE) for m in members])
        for site in sites:
            row[f"hd95:{site}"] = mean_sd([m.get("sites", {}).get(site, {}).get(Field.HD95) for m in members])
        rows.append(row)
    return rows


def _digits(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def runs_csv(runs: Sequence[Mapping[str, Any]]) -> str:
    """Every run, every digit: :data:`RUN_COLUMNS` then ``dice:<site>`` and ``hd95:<site>`` columns
    (empty cells: missing)."""
    sites = sorted({s for r in runs for s in r.get("sites", {})})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*RUN_COLUMNS, *[f"{k}:{s}" for k in ("dice", Field.HD95) for s in sites]])
    for r in runs:
        cells = [r.get(c) for c in RUN_COLUMNS]
        writer.writerow([_digits(c) if isinstance(c, float) else "" if c is None else c for c in cells]
                        + [_digits(r.get("sites", {}).get(s, {}).get(k)) for k in (Field.DICE, Field.HD95)
                           for s in sites])
    return buf.getvalue()


def summary_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The aggregated rows, every digit: ``<key>_mean`` and ``<key>_sd`` (sd empty below two seeds)."""
    keys = [k for k in rows[0] if isinstance(rows[0][k], tuple)] if rows else []
    for row in rows[1:]:
        keys += [k for k in row if isinstance(row[k], tuple) and k not in keys]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "method", "algorithm", "model", "seeds", *[f"{k}_{s}" for k in keys
                                                                          for s in ("mean", "sd")]])
    for row in rows:
        cells = [row["dataset"], row["method"], row["algorithm"], row["model"], row["seeds"]]
        for k in keys:
            mean, sd = row.get(k, (None, None))
            cells += [_digits(mean), _digits(sd)]
        writer.writerow(cells)
    return buf.getvalue()


def _cell(value: tuple[float | None, float | None], decimals: int, seeds: int, scale: float = 1.0) -> str:
    mean, sd = value
    if mean is None:
        return DASH
    return fmt_mean_sd(mean / scale, sd / scale if sd is not None and seeds >= MIN_SEEDS else None, decimals)


def _site_hd95_table(members: Sequence[Mapping[str, Any]], sites: Sequence[str]) -> list[str]:
    """The per-site HD95 (mm) of the dataset's rows, mean +- sd as in the main table."""
    head = ["method", "model", *[f"HD95 {s} (mm)" for s in sites]]
    out = ["", "Per-site test HD95 (mm) of the same models:", "", "| " + " | ".join(head) + " |",
           "|---|---|" + "---:|" * len(sites)]
    for r in members:
        n = int(r["seeds"])
        marker = "" if n >= MIN_SEEDS else f" (n={n})"
        out.append("| " + " | ".join([f"`{r['method']}`{marker}", str(r["model"]),
                                      *[_cell(r.get(f"hd95:{s}", (None, None)), DECIMALS[Field.HD95], n)
                                        for s in sites]]) + " |")
    return out


def results_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """One markdown table per dataset, rounded: mean +- sd over seeds (``n=<k>`` below 3 seeds)."""
    out: list[str] = []
    for dataset in dict.fromkeys(str(r["dataset"]) for r in rows):
        members = [r for r in rows if r["dataset"] == dataset]
        all_sites = sorted({k[5:] for r in members for k in r if k.startswith("site:")})
        sites = all_sites if len(all_sites) <= MAX_SITE_COLUMNS else []
        optional = [k for k in ("loso_dice", "unseen_dice", "unseen_hd95") if any(r[k][0] is not None for r in members)]
        head = (["method", "model", "seeds", "Dice (site mean)", "Dice (image-weighted)",
                 *[HEADERS[m] for m in METRICS if m != Field.DICE], *[f"Dice {s}" for s in sites],
                 "MB up", "MB down", "MB total", "s / round", "server overhead %",
                 "not training %", "peak RSS (MiB)",
                 *(["LOSO Dice"] if "loso_dice" in optional else []),
                 *(["unseen-site Dice"] if "unseen_dice" in optional else []),
                 *(["unseen-site HD95 (mm)"] if "unseen_hd95" in optional else [])])
        out += [f"### {dataset}", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
        for r in members:
            n = int(r["seeds"])
            marker = "" if n >= MIN_SEEDS else f" (n={n})"
            cells = [f"`{r['method']}`{marker}", str(r["model"]), str(n), _cell(r[Field.DICE], 3, n),
                     _cell(r["dice_image"], 3, n),
                     *[_cell(r[m], DECIMALS[m], n) for m in METRICS if m != Field.DICE],
                     *[_cell(r.get(f"site:{s}", (None, None)), 3, n) for s in sites],
                     _cell(r["bytes_up"], 3, n, MB), _cell(r["bytes_down"], 3, n, MB),
                     _cell(r["bytes_total"], 3, n, MB), _cell(r["round_seconds"], 2, n),
                     _cell(r["overhead_share"], 1, n, 0.01), _cell(r["not_training_share"], 1, n, 0.01),
                     _cell(r["peak_rss_mb"], 0, n),
                     *[_cell(r[k], DECIMALS[Field.HD95] if k == "unseen_hd95" else 3, n) for k in optional]]
            out.append("| " + " | ".join(cells) + " |")
        if sites:
            out += _site_hd95_table(members, sites)
        if len(all_sites) > MAX_SITE_COLUMNS:
            out += ["", f"Per-site Dice and HD95 of the {len(all_sites)} sites: summary.csv "
                        "(`site:<name>_mean`, `hd95:<name>_mean`, `_sd`)."]
        out.append("")
    if any(int(r["seeds"]) < MIN_SEEDS for r in rows):
        out.append(f"`n=<k>`: fewer than {MIN_SEEDS} seeds, the mean alone (no sd is claimed).")
    return "\n".join(out).rstrip() + "\n" if out else f"{DASH}\n"

