"""Robustness benchmark: one attacking site, FedAvg against each robust aggregation rule.

Not part of `make bench`. Tiny synthetic 2D data (``--sites`` clients of equal size), a small U-Net,
in-process engine, one process. Rows, per seed:

* ``clean``: FedAvg, no attack (the reference);
* per attack (``scale``: the update ``w + 100 (w_k - w)``; ``sign_flip``: ``w - (w_k - w)``;
  ``sign_flip10``: ``w - 10 (w_k - w)``; ``label_flip``: the attacker trains on inverted masks,
  foreground <-> background):
  ``fedavg`` (no defence), ``fedavg_screening`` (the server's norm screening,
  ``federation.max_norm_ratio`` at its default; only where that key exists), ``median``,
  ``trimmed_mean`` (beta 0.2), ``krum``, ``multi_krum`` (m = K - f), ``bulyan`` and
  ``clip`` (mean of updates clipped to ``--clip-norm``); the Krum family and Bulyan with f = 1.

Every row except ``fedavg_screening`` runs with the norm screening off (when the key exists), so
each row measures its rule alone. The last round's global model is scored (``eval.select: last``):
mean test Dice over sites. Target: the best robust rule within 2 Dice points of ``clean``.

Usage:
    python benchmarks/robustness.py [--seeds 0,1,2] [--rounds 12] [--only NAME,...] [--out runs/robustness]
    python benchmarks/robustness.py --table runs/robustness/results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedseg.config import FederationConfig, config_from_dict
from fedseg.records import SummaryKey
from fedseg.runtime.sim import run_inprocess

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = {
    "scale": {"kind": "scale", "scale": 100.0},
    "sign_flip": {"kind": "sign_flip"},
    "sign_flip10": {"kind": "sign_flip", "scale": 10.0},
    "label_flip": {"kind": "label_flip", "label_mode": "invert"},
}
RULES = ["fedavg", "fedavg_screening", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "clip"]
SCREENING = "max_norm_ratio" in FederationConfig.model_fields
"""Whether the server's norm screening (engineer "resil"'s ``federation.max_norm_ratio``) exists here."""


def aggregation(rule: str, clip_norm: float) -> dict[str, Any]:
    if rule in ("fedavg", "fedavg_screening"):
        return {"rule": "mean"}
    if rule == "clip":
        return {"rule": "mean", "clip_norm": clip_norm}
    if rule in ("krum", "multi_krum", "bulyan"):
        return {"rule": rule, "num_malicious": 1}
    return {"rule": rule, "trim_fraction": 0.2} if rule == "trimmed_mean" else {"rule": rule}


def runs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run name -> {"attack": section or None, "aggregation": section, "screening": bool}."""
    out: dict[str, dict[str, Any]] = {"clean": {"attack": None, "aggregation": {"rule": "mean"}, "screening": False,
                                                "group": "clean", "rule": "fedavg"}}
    for attack, section in ATTACKS.items():
        for rule in RULES:
            if rule == "fedavg_screening" and not SCREENING:
                continue
            out[f"{attack}_{rule}"] = {"attack": {**section, "sites": [args.attacker]},
                                       "aggregation": aggregation(rule, args.clip_norm),
                                       "screening": rule == "fedavg_screening", "group": attack, "rule": rule}
    return out


def build_config(name: str, spec: dict[str, Any], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    channels = [int(c) for c in args.channels.split(",")]
    federation: dict[str, Any] = {"rounds": args.rounds, "local_epochs": args.local_epochs}
    if SCREENING and not spec["screening"]:
        federation["max_norm_ratio"] = None
    cfg: dict[str, Any] = {
        "name": name,
        "seed": seed,
        "data": {"source": "synthetic", "synthetic": {"num_sites": args.sites, "spatial_dims": 2, "size": args.size,
                                                      "samples_per_site": [args.samples] * args.sites}},
        "model": {"channels": channels, "strides": [2] * (len(channels) - 1), "num_res_units": 0},
        "train": {"batch_size": 8, "lr": args.lr},
        "federation": federation,
        "eval": {"every": args.rounds, "select": "last", "personalized": False},
        "algorithm": {"name": "fedavg"},
        "aggregation": spec["aggregation"],
    }
    if spec["attack"] is not None:
        cfg["attack"] = spec["attack"]
    return cfg


def run_one(name: str, spec: dict[str, Any], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    run_dir = Path(args.out) / f"{name}_s{seed}"
    start = time.perf_counter()
    result = run_inprocess(config_from_dict(build_config(name, spec, args, seed)), run_dir, write_report=False)
    seconds = time.perf_counter() - start
    test = result.summary[SummaryKey.TEST]["global"]
    dice = {site: float(m["dice"]) for site, m in test.items()}
    return {"group": spec["group"], "rule": spec["rule"], "test_dice": dice,
            "mean_test_dice": statistics.fmean(dice.values()), "seconds": seconds}


def _cell(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown_table(results: dict[str, Any]) -> str:
    """Per attack and rule: mean test Dice over sites (mean ± sd over seeds, per seed), the change
    against ``clean`` of the same seed, and per attack whether the best robust rule is within 2 points."""
    rows = results["runs"]
    seeds = sorted({int(k.rpartition("_s")[2]) for k in rows})
    clean = {s: rows[f"clean_s{s}"]["mean_test_dice"] for s in seeds if f"clean_s{s}" in rows}
    names = list(dict.fromkeys(k.rpartition("_s")[0] for k in rows))
    lines = ["| run | Dice (site mean), mean ± sd | per seed (" + " / ".join(f"s{s}" for s in seeds)
             + ") | Δ vs clean, points per seed |", "|---|---:|---:|---:|"]
    best: dict[str, dict[int, float]] = {}
    for name in names:
        per = {s: rows[f"{name}_s{s}"]["mean_test_dice"] for s in seeds if f"{name}_s{s}" in rows}
        delta = " / ".join(f"{100 * (per[s] - clean[s]):+.1f}" for s in per if s in clean)
        lines.append(f"| `{name}` | {_cell(list(per.values()))} | {' / '.join(f'{v:.3f}' for v in per.values())} "
                     f"| {delta} |")
        first = next(rows[f"{name}_s{s}"] for s in seeds if f"{name}_s{s}" in rows)
        if first["rule"] not in ("fedavg", "fedavg_screening"):
            for s, v in per.items():
                best.setdefault(first["group"], {})[s] = max(best.get(first["group"], {}).get(s, 0.0), v)
    verdicts = []
    for attack, per in best.items():
        gaps = {s: 100 * (clean[s] - v) for s, v in per.items() if s in clean}
        ok = all(g <= 2.0 for g in gaps.values())
        verdicts.append(f"- {attack}: best robust rule {'within' if ok else 'NOT within'} 2 points of clean "
                        f"(gap per seed: {', '.join(f's{s} {g:+.1f}' for s, g in gaps.items())})")
    return "\n".join(lines + [""] + verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--sites", type=int, default=7, help="Bulyan with f = 1 needs 4f + 3 = 7 clients")
    parser.add_argument("--samples", type=int, default=24, help="images per site (70 %% train)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", default="8,16,32")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--attacker", default="site0")
    parser.add_argument("--clip-norm", type=float, default=4.0,
                        help="about the honest update norm ||w_k - w|| of round 1 (4.0-4.2 with the defaults)")
    parser.add_argument("--only", default=None, help="comma-separated run names")
    parser.add_argument("--out", default="runs/robustness")
    parser.add_argument("--table", default=None, help="print the table of a results.json and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    results["meta"] = {"commit": commit.strip(), "machine": platform.platform(), "python": sys.version.split()[0],
                       "args": vars(args), "screening_key": SCREENING, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                             time.gmtime())}
    plan = runs(args)
    only = set(args.only.split(",")) if args.only else None
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, spec in plan.items():
            key = f"{name}_s{seed}"
            if (only and name not in only) or key in results["runs"]:
                continue
            results["runs"][key] = run_one(name, spec, args, seed)
            print(f"{key}: dice {results['runs'][key]['mean_test_dice']:.3f} "
                  f"({results['runs'][key]['seconds']:.0f} s)", flush=True)
            path.write_text(json.dumps(results, indent=1))
    print(markdown_table(results))


if __name__ == "__main__":
    main()
