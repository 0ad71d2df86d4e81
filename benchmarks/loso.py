"""Leave-one-site-out benchmark: unseen-site test Dice of several methods, one column per held-out site.

Not part of `make bench`. For each method, :func:`fedseg.runtime.loso.run_loso` trains one run
per held-out site (``federation.train_sites`` = every other site) and seed under
``OUT/<method>/s<seed>/holdout_<site>``, and scores the held-out site with the method's
unseen-site model (the global model for the global methods). Finished runs are skipped, so an
interrupted benchmark continues where it stopped. The table (``OUT/loso_compare.md``) has one row
per method: the held-out site's test Dice, mean +- sd over seeds, per site, their mean, and beside
them the mean test Dice of the same runs on their training sites (judged-by model).

Without ``--config`` the data are the embedded synthetic 3-site 2D set (32x32, a small U-Net);
any run config works (``--config configs/busbra_fedavg.yaml``), its algorithm replaced by each
``--algorithms`` entry (default parameters).

Usage:
    python benchmarks/loso.py [--config CFG] [--algorithms fedavg,fedbn] [--seeds 0,1,2]
                              [--set key=value ...] [--out runs/loso_bench]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from fedseg.config import config_from_dict, load_config
from fedseg.config.loading import apply_overrides
from fedseg.io.atomic import atomic_write_text
from fedseg.records import Field, SummaryKey
from fedseg.runtime.loso import LosoRow, run_loso

SYNTHETIC: dict[str, Any] = {
    "name": "loso_synthetic",
    "seed": 0,
    "data": {"source": "synthetic", "synthetic": {"num_sites": 3, "spatial_dims": 2, "size": 32}},
    "model": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 0},
    "train": {"batch_size": 8, "lr": 1e-2},
    "federation": {"rounds": 8, "local_epochs": 1},
    "eval": {"every": 1},
}


def _cell(row: LosoRow) -> str:
    mean, sd = row.stats(row.dice)
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if len(row.dice) > 1 else "")


def seen_dice(run_dirs: Iterable[Path]) -> float:
    """The mean over runs of each run's mean test Dice on its training sites, each scored with the
    model the method is judged by (the in-distribution reference beside the held-out Dice)."""
    means = []
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        trained = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["federation"]["train_sites"]
        scores = summary[SummaryKey.TEST][summary[SummaryKey.JUDGED_BY]]
        means.append(statistics.fmean(float(scores[s][Field.DICE]) for s in trained))
    return statistics.fmean(means) if means else float("nan")


def compare_table(results: dict[str, list[LosoRow]], seen: dict[str, float], title: str) -> str:
    """One row per method: each held-out site's test Dice (mean +- sd over seeds), their mean, and
    the mean test Dice on the training sites of the same runs."""
    sites = [r.held_out for r in next(iter(results.values()))]
    lines = [f"# {title}", "", "| method | model | " + " | ".join(f"held out {s}" for s in sites)
             + " | mean held out | training sites (judged-by model) |", "|---|---|" + "---:|" * (len(sites) + 2)]
    for method, rows in results.items():
        means = [m for r in rows if math.isfinite(m := r.stats(r.dice)[0])]
        mean = f"{sum(means) / len(means):.3f}" if means else "–"
        lines.append(f"| {method} | {rows[0].model} | " + " | ".join(_cell(r) for r in rows)
                     + f" | {mean} | {seen[method]:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="run config (default: embedded synthetic 3 sites)")
    parser.add_argument("--algorithms", default="fedavg,fedbn", help="comma-separated registered algorithm names")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="override, e.g. federation.rounds=5")
    parser.add_argument("--out", type=Path, default=Path("runs/loso_bench"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results: dict[str, list[LosoRow]] = {}
    seen: dict[str, float] = {}
    name = ""
    for method in [a for a in args.algorithms.split(",") if a]:
        sets = [*args.sets, f"algorithm={{name: {method}}}"]
        cfg = load_config(args.config, sets) if args.config else config_from_dict(apply_overrides(SYNTHETIC, sets))
        name = cfg.name
        start = time.perf_counter()
        result = run_loso(cfg, args.out / method, seeds=seeds, notify=lambda line, m=method: print(f"{m} {line}"))
        print(f"{method}: {time.perf_counter() - start:.0f} s ({len(result.skipped)} runs skipped)", flush=True)
        results[method] = result.rows
        seen[method] = seen_dice(result.run_dirs.values())
    if not results:
        print("no --algorithms given", file=sys.stderr)
        return 2
    table = compare_table(results, seen, f"Leave-one-site-out test Dice: {name}, seeds {args.seeds}")
    atomic_write_text(args.out / "loso_compare.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
