"""Leave-one-site-out (LOSO) evaluation: unseen-site robustness of a method.

For each site ``s`` of a config's data, the run is trained with ``federation.train_sites`` = every
site but ``s`` (one run directory per held-out site, ``OUT/holdout_<s>``, or
``OUT/s<seed>/holdout_<s>`` with several seeds), and the held-out site's test Dice and HD95 are
read from the run's ``summary.json``: the ``unseen`` records (the model the method uses on a site
that never trained, :meth:`~fedseg.algorithms.base.Algorithm.unseen_params`; the global model for
the global methods), or, when a run has none, the ``global`` records. One table, one row per
held-out site and a mean row, is written as ``loso.csv`` and ``loso.md`` (atomically).

A held-out run whose ``summary.json`` exists is skipped (its configuration must match); one with a
checkpoint is resumed (``fedseg run --resume`` semantics); any other is started. Runs use the
in-process engine (the Flower engines give the same figures, see the parity tests).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedseg.config import RunConfig, config_from_dict
from fedseg.data.partition import site_names
from fedseg.data.scan import scan_root
from fedseg.engine.progress import ProgressSink
from fedseg.engine.rundir import RunDir
from fedseg.io.atomic import atomic_write_text
from fedseg.records import Field, ModelKind, SummaryKey
from fedseg.runtime.common import RunError, config_text
from fedseg.runtime.sim import run_inprocess

__all__ = ["LosoRow", "LosoResult", "data_sites", "holdout_config", "holdout_dir", "run_loso", "collect",
           "loso_markdown", "loso_csv", "CSV_FILE", "MARKDOWN_FILE"]

CSV_FILE = "loso.csv"
MARKDOWN_FILE = "loso.md"
_COLUMNS = ("held_out", "model", "seeds", "dice", "dice_sd", "hd95", "hd95_sd", "n", "trained_on")


@dataclass
class LosoRow:
    """One held-out site: its test scores over the seeds (mean and sample sd; sd 0 for one seed)."""

    held_out: str
    model: str  # the ModelKind the scores come from (unseen, or global)
    trained_on: list[str]
    dice: list[float] = field(default_factory=list)  # one per seed
    hd95: list[float] = field(default_factory=list)
    n: int = 0  # test images/volumes of the held-out site

    def stats(self, values: list[float]) -> tuple[float, float]:
        """Mean and sample sd of the finite ``values`` (NaN, NaN when none; sd 0 for one)."""
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return float("nan"), float("nan")
        return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


@dataclass
class LosoResult:
    rows: list[LosoRow]
    run_dirs: dict[tuple[str, int], Path]  # (held-out site, seed) -> run directory
    csv_path: Path
    markdown_path: Path
    skipped: list[Path]  # finished runs that were not trained again


def data_sites(cfg: RunConfig) -> list[str]:
    """The site names of the config's data, without loading it: ``site0..`` for synthetic data,
    the partition's names for a partitioned dataset, ``data.sites`` or every site folder under
    ``data.root`` otherwise.

    Raises:
        RunError: the data root cannot be listed (the message names it).
    """
    data = cfg.data
    if data.source == "synthetic":
        return [f"site{i}" for i in range(data.synthetic.num_sites)]
    if data.partition is not None:
        return site_names(data.partition)
    if data.sites is not None:
        return list(data.sites)
    if data.root is None:
        raise RunError("leave-one-site-out: data.root is not set, so its sites cannot be listed")
    names, problems = scan_root(Path(data.root))
    if not names:
        detail = "; ".join(str(p) for p in problems[:3])
        raise RunError(f"leave-one-site-out: no site folders under data.root {data.root}" + (f" ({detail})"
                                                                                              if detail else ""))
    return names


def holdout_config(cfg: RunConfig, held_out: str, seed: int | None = None) -> RunConfig:
    """``cfg`` with ``federation.train_sites`` = every data site but ``held_out`` (and ``seed`` when
    given); the config's own ``train_sites`` is replaced.

    Raises:
        RunError: ``held_out`` is not a data site, or fewer than two sites would remain evaluated.
    """
    sites = data_sites(cfg)
    if held_out not in sites:
        raise RunError(f"leave-one-site-out: {held_out!r} is not a data site; allowed: {', '.join(sites)}")
    if len(sites) < 2:
        raise RunError(f"leave-one-site-out needs at least 2 data sites, the config has {len(sites)}: {sites}")
    raw = cfg.model_dump(mode="json")
    raw["federation"]["train_sites"] = [s for s in sites if s != held_out]
    if seed is not None:
        raw["seed"] = seed
    return config_from_dict(raw)


def holdout_dir(out: Path, held_out: str, seed: int | None) -> Path:
    """``OUT/holdout_<site>``, or ``OUT/s<seed>/holdout_<site>`` when seeds are given."""
    return (out if seed is None else out / f"s{seed}") / f"holdout_{held_out}"


def _seed_list(seeds: Sequence[int] | None) -> list[int | None]:
    """The seeds to run; ``[None]`` (the config's seed, no ``s<seed>`` folder) when none are given."""
    return list(seeds) if seeds else [None]


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = RunDir(run_dir).summary
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot read the run's summary ({type(exc).__name__}: {exc})") from None
    if not isinstance(summary, dict):
        raise RunError(f"{path}: not a summary mapping")
    return summary


def held_out_scores(run_dir: Path, held_out: str) -> tuple[str, dict[str, Any]]:
    """The model kind (``unseen``, else ``global``) and the test metrics of ``held_out`` in the
    run's ``summary.json`` (selected checkpoint).

    Raises:
        RunError: the summary has no test record of the site under either model.
    """
    test = _read_summary(run_dir).get(SummaryKey.TEST, {})
    for kind in (ModelKind.UNSEEN, ModelKind.GLOBAL):
        scores = test.get(kind, {}).get(held_out)
        if isinstance(scores, dict) and Field.DICE in scores:
            return str(kind), scores
    raise RunError(f"{run_dir / 'summary.json'}: no unseen or global test record of the held-out site {held_out!r} "
                   f"(models there: {', '.join(test) or 'none'}); the method has no model for an unseen site")


def collect(cfg: RunConfig, out: Path, seeds: Sequence[int] | None) -> list[LosoRow]:
    """The table rows from the finished held-out runs under ``out`` (one row per data site)."""
    rows = []
    for site in data_sites(cfg):
        trained = [s for s in data_sites(cfg) if s != site]
        row: LosoRow | None = None
        for seed in _seed_list(seeds):
            kind, scores = held_out_scores(holdout_dir(out, site, seed), site)
            row = row or LosoRow(site, kind, trained)
            row.dice.append(float(scores[Field.DICE]))
            hd = scores.get(Field.HD95)
            row.hd95.append(float(hd) if hd is not None else float("nan"))
            row.n = int(scores.get(Field.N, 0))
        assert row is not None
        rows.append(row)
    return rows


def _fmt(value: float, digits: int | None) -> str:
    """``value`` with ``digits`` decimals (None: every digit, ``repr``); "" when not finite."""
    if not math.isfinite(value):
        return ""
    return repr(value) if digits is None else f"{value:.{digits}f}"


def _mean_row(rows: list[LosoRow], exact: bool = False) -> dict[str, str]:
    """The mean over held-out sites of each site's mean Dice and HD95 (sites without one left out)."""
    dice = [d for r in rows if math.isfinite(d := r.stats(r.dice)[0])]
    hd = [h for r in rows if math.isfinite(h := r.stats(r.hd95)[0])]
    return {"held_out": "mean", "dice": _fmt(float(np.mean(dice)) if dice else float("nan"), None if exact else 4),
            "hd95": _fmt(float(np.mean(hd)) if hd else float("nan"), None if exact else 2)}


def _cells(row: LosoRow, exact: bool = False) -> dict[str, str]:
    """A row's cells: rounded for reading, or every digit (``exact``, the CSV)."""
    dice, dice_sd = row.stats(row.dice)
    hd, hd_sd = row.stats(row.hd95)
    d4, d2 = (None, None) if exact else (4, 2)
    return {"held_out": row.held_out, "model": row.model, "seeds": str(len(row.dice)), "dice": _fmt(dice, d4),
            "dice_sd": _fmt(dice_sd, d4), "hd95": _fmt(hd, d2), "hd95_sd": _fmt(hd_sd, d2), "n": str(row.n),
            "trained_on": " ".join(row.trained_on)}


def loso_csv(rows: list[LosoRow]) -> str:
    """The table as CSV (columns :data:`_COLUMNS`, every digit; empty cells for missing values), mean row last."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_cells(row, exact=True))
    writer.writerow(_mean_row(rows, exact=True))
    return buf.getvalue()


def loso_markdown(rows: list[LosoRow], title: str) -> str:
    """The table as markdown: Dice and HD95 as mean +- sd over seeds, mean row last."""
    lines = [f"# {title}", "", "| held-out site | model | seeds | test Dice | HD95 (mm) | n | trained on |",
             "|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        c = _cells(row)
        dice = c["dice"] + (f" ± {c['dice_sd']}" if len(row.dice) > 1 and c["dice_sd"] else "")
        hd = (c["hd95"] + (f" ± {c['hd95_sd']}" if len(row.hd95) > 1 and c["hd95_sd"] else "")) or "–"
        lines.append(f"| {row.held_out} | {row.model} | {c['seeds']} | {dice} | {hd} | {c['n']} | "
                     f"{', '.join(row.trained_on)} |")
    mean = _mean_row(rows)
    lines.append(f"| **mean** | | | {mean['dice']} | {mean['hd95'] or '–'} | | |")
    return "\n".join(lines) + "\n"


def run_loso(
    cfg: RunConfig,
    out: Path,
    *,
    seeds: Sequence[int] | None = None,
    progress: Callable[[], ProgressSink] | None = None,
    notify: Callable[[str], None] | None = None,
    command: Callable[[RunConfig, Path], str] | None = None,
) -> LosoResult:
    """Train (or resume, or skip) one held-out run per data site and seed, then write the table.

    Args:
        cfg: the validated run configuration (its ``train_sites`` is replaced per run).
        out: the folder of the held-out runs and of ``loso.csv`` / ``loso.md``.
        seeds: the seeds to run (runs under ``OUT/s<seed>/``); None: the config's seed, runs
            directly under ``out``.
        progress: makes the progress sink of each run (a fresh one per run).
        notify: receives one line per run (which site is held out, skipped or resumed).
        command: the equivalent ``fedseg run`` command of a held-out config and run directory,
            recorded in its ``command.txt``.

    Raises:
        RunError: a run directory holds a run of another configuration, or a run fails to start.
    """
    say = notify or (lambda _: None)
    sites = data_sites(cfg)
    run_dirs: dict[tuple[str, int], Path] = {}
    skipped: list[Path] = []
    jobs = [(site, seed) for seed in _seed_list(seeds) for site in sites]
    for i, (site, seed) in enumerate(jobs, 1):
        held_cfg = holdout_config(cfg, site, seed)
        run_dir = holdout_dir(out, site, seed)
        run_dirs[(site, held_cfg.seed)] = run_dir
        run = RunDir(run_dir)
        head = f"[{i}/{len(jobs)}] held out {site} (seed {held_cfg.seed})"
        if run.summary.is_file():
            if not run.config.is_file() or run.config.read_text(encoding="utf-8") != config_text(held_cfg):
                raise RunError(f"{run_dir} holds a finished run of another configuration; use another --out or "
                               f"delete {run_dir}")
            say(f"{head}: finished, skipped ({run_dir})")
            skipped.append(run_dir)
            continue
        resume = run.checkpoint.is_file()
        say(f"{head}: {'resuming' if resume else 'training'} on {', '.join(held_cfg.federation.train_sites or [])}"
            f" -> {run_dir}")
        run_inprocess(held_cfg, run_dir, resume=resume, progress=progress() if progress else None,
                      command=command(held_cfg, run_dir) if command else None)
    rows = collect(cfg, out, seeds)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / CSV_FILE, out / MARKDOWN_FILE
    atomic_write_text(csv_path, loso_csv(rows))
    title = f"Leave-one-site-out: {cfg.name}, {cfg.algorithm['name']}, seeds {', '.join(map(str, seeds or [cfg.seed]))}"
    atomic_write_text(md_path, loso_markdown(rows, title))
    return LosoResult(rows, run_dirs, csv_path, md_path, skipped)
