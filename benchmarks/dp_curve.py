"""Client-level DP: test Dice against epsilon for several noise multipliers (privacy.client).

Synthetic 2D data (the embedded generator) split into many sites, FedAvg in-process; one run per
(noise multiplier, seed) plus a no-DP FedAvg reference per seed. Every DP run clips each update to
the same ``C`` and averages uniformly; ``z = 0`` is clipping alone (epsilon = inf). Reports, per
run, the final epsilon at delta (summary.json ``privacy``) and the mean test Dice over sites of
the global model (summary.json ``mean``), per seed and mean +- sd over seeds.

Not part of ``make bench`` (it trains many federations; see docs/benchmarks.md for timings).

Usage:
    python benchmarks/dp_curve.py [--sites 16] [--per-round 16] [--rounds 15]
        [--size 32] [--channels 4,8,16] [--noise 0,0.3,0.7,1.5] [--clip 0.5] [--seeds 0,1]
        [--out runs/dp_curve] [--append] [--smoke]
    python benchmarks/dp_curve.py --table runs/dp_curve/results.json [--plot docs/dp_curve.png]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedseg.config import config_from_dict
from fedseg.runtime.sim import run_inprocess

ROOT = Path(__file__).resolve().parents[1]


def build_config(args: argparse.Namespace, seed: int, noise: float | None) -> dict[str, Any]:
    """One run: FedAvg on ``args.sites`` synthetic sites; ``noise`` None = no DP."""
    cfg: dict[str, Any] = {
        "name": f"dp_z{noise}_s{seed}" if noise is not None else f"nodp_s{seed}",
        "seed": seed,
        "data": {"source": "synthetic", "synthetic": {"num_sites": args.sites, "spatial_dims": 2, "size": args.size,
                                                      "samples_per_site": [args.samples] * args.sites}},
        "model": {"channels": [int(c) for c in args.channels.split(",")], "strides": [2, 2], "num_res_units": 0},
        "train": {"batch_size": 4, "lr": args.lr, "device": "cpu"},
        "federation": {"rounds": args.rounds, "local_epochs": 1, "fraction": args.per_round / args.sites},
        "eval": {"every": args.rounds, "select": "last"},
        "algorithm": {"name": "fedavg"},
    }
    if noise is not None:
        cfg["privacy"] = {"client": {"enabled": True, "noise_multiplier": noise, "clipping_norm": args.clip}}
    return cfg


def one_run(out: Path, cfg_dict: dict[str, Any]) -> dict[str, Any]:
    run_dir = out / cfg_dict["name"]
    t0 = time.perf_counter()
    result = run_inprocess(config_from_dict(cfg_dict), run_dir, write_report=False)
    seconds = time.perf_counter() - t0
    summary = result.summary
    privacy = summary.get("privacy") or {}
    norms = [json.loads(line).get("update_norm") for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"update_norm"' in line]
    return {
        "dice": float(summary["mean"]["global"]["dice"]),
        "epsilon": privacy.get("epsilon"),
        "delta": privacy.get("delta"),
        "sample_rate": privacy.get("sample_rate"),
        "median_update_norm": statistics.median(norms) if norms else None,
        "seconds": seconds,
    }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt_eps(value: Any) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(float(value)) else f"{float(value):.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """Rows: no DP, then each noise multiplier; columns: epsilon, Dice mean +- sd, Dice per seed."""
    meta = results["meta"]
    seeds = meta["seeds"]
    lines = [f"{meta['sites']} synthetic 2D sites ({meta['size']}x{meta['size']}, {meta['samples']} images each), "
             f"FedAvg, {meta['per_round']} clients per round (q = {meta['per_round'] / meta['sites']:.2f}), "
             f"{meta['rounds']} rounds, clipping norm C = {meta['clip']}, delta = {meta['delta']}.", "",
             "| noise multiplier z | noise std per round (z C / m) | epsilon | test Dice (mean +- sd) | "
             + " | ".join(f"seed {s}" for s in seeds) + " | s/run |",
             "|---|---|---|---|" + "---|" * len(seeds) + "---|"]
    for label, rows in results["runs"].items():
        dice = [rows[str(s)]["dice"] for s in seeds if str(s) in rows]
        eps = next((rows[str(s)]["epsilon"] for s in seeds if str(s) in rows), None)
        sd = statistics.stdev(dice) if len(dice) > 1 else 0.0
        z = None if label == "none" else float(label)
        std = "-" if z is None else f"{z * meta['clip'] / meta['per_round']:.4f}"
        secs = statistics.mean(rows[str(s)]["seconds"] for s in seeds if str(s) in rows)
        lines.append(f"| {'no DP (n_k-weighted)' if z is None else z} | {std} | {_fmt_eps(eps)} | "
                     f"{statistics.mean(dice):.3f} +- {sd:.3f} | "
                     + " | ".join(f"{rows[str(s)]['dice']:.3f}" if str(s) in rows else "-" for s in seeds)
                     + f" | {secs:.0f} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Test Dice against epsilon (log scale; clipping alone and no DP drawn at the right edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = results["meta"]["seeds"]
    finite = [float(rows[str(seeds[0])]["epsilon"]) for rows in results["runs"].values()
              if rows.get(str(seeds[0]), {}).get("epsilon") not in (None, math.inf)]
    edge = max(finite) * 4 if finite else 1.0
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, rows in results["runs"].items():
        eps = rows[str(seeds[0])]["epsilon"]
        x = edge * (2.0 if label == "none" else 1.0) if eps is None or math.isinf(float(eps)) else float(eps)
        dice = [rows[str(s)]["dice"] for s in seeds if str(s) in rows]
        ax.scatter([x] * len(dice), dice, color="0.6", s=12)
        name = "no DP" if label == "none" else f"z={float(label):g}"
        ax.errorbar([x], [statistics.mean(dice)], yerr=[statistics.stdev(dice) if len(dice) > 1 else 0.0],
                    fmt="s" if label == "none" else "o", color="C3" if label == "none" else "C0", capsize=3)
        ax.annotate(name, (x, statistics.mean(dice)), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"epsilon at delta = {results['meta']['delta']:g} (right edge: z = 0 and no DP, epsilon = inf)")
    ax.set_ylabel("test Dice (mean over sites)")
    ax.set_title(f"Client-level DP, {results['meta']['sites']} sites, {results['meta']['rounds']} rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=16)
    parser.add_argument("--per-round", type=int, default=16, help="clients sampled per round (m)")
    parser.add_argument("--samples", type=int, default=20, help="images per site")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--channels", default="4,8,16", help="U-Net channels (3 levels)")
    parser.add_argument("--clip", type=float, default=0.5)
    parser.add_argument("--noise", default="0,0.3,0.7,1.5")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "dp_curve")
    parser.add_argument("--append", action="store_true", help="keep the runs of an existing results.json in --out")
    parser.add_argument("--smoke", action="store_true", help="2 rounds, 4 sites, one seed (a quick check)")
    parser.add_argument("--table", type=Path, help="print the table of an earlier results.json and exit")
    parser.add_argument("--plot", type=Path, help="with --table: also draw Dice against epsilon to this PNG")
    args = parser.parse_args(argv)
    if args.table:
        results = json.loads(args.table.read_text())
        print(markdown_table(results))
        if args.plot:
            plot(results, args.plot)
        return 0
    if args.smoke:
        args.sites, args.per_round, args.rounds, args.seeds, args.noise = 4, 4, 2, "0", "0,1"
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    noises = [float(z) for z in args.noise.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    from fedseg.engine.privacy import default_delta

    results: dict[str, Any] = {
        "meta": {"sites": args.sites, "per_round": args.per_round, "samples": args.samples, "size": args.size,
                 "rounds": args.rounds, "clip": args.clip, "seeds": seeds, "delta": default_delta(args.sites),
                 "commit": _git_commit(), "machine": f"{platform.machine()} {platform.processor()} "
                 f"({torch.get_num_threads()} torch thread)", "python": sys.version.split()[0],
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv)},
        "runs": {},
    }
    path = args.out / "results.json"
    if args.append and path.is_file():  # keep the runs already measured (same settings), add the missing ones
        earlier = json.loads(path.read_text())
        same = ("sites", "per_round", "samples", "size", "rounds", "clip")
        if any(earlier["meta"][k] != results["meta"][k] for k in same):
            raise SystemExit(f"--append: {path} was measured with other settings: {earlier['meta']}")
        results["runs"] = earlier["runs"]
        results["meta"]["seeds"] = sorted(set(earlier["meta"]["seeds"]) | set(seeds))
        results["meta"]["earlier"] = {k: earlier["meta"][k] for k in ("commit", "date", "command")}
    for seed in seeds:
        for noise in [None, *noises]:
            label = "none" if noise is None else str(noise)
            if str(seed) in results["runs"].get(label, {}):
                continue
            cfg = build_config(args, seed, noise)
            row = one_run(args.out, cfg)
            results["runs"].setdefault(label, {})[str(seed)] = row
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"seed {seed} z={label}: dice {row['dice']:.3f} epsilon {_fmt_eps(row['epsilon'])} "
                  f"median update norm {row['median_update_norm']} ({row['seconds']:.0f} s)", flush=True)
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
