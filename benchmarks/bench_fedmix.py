"""FedMix benchmark on BUS-BRA (3 scanner sites, 128x128): mixed supervision vs its two baselines.

Not part of `make bench` (it trains 3 federations per seed; see docs/benchmarks.md for timings).

Runs, same data, model, optimiser (Adam 1e-3, wd 1e-4, batch 16, persistent optimiser state),
rounds and seeds (configs/fedmix/):

* ``fedmix``: busbra.yaml -- Toshiba_Aplio300 pixel masks, GE_Logiq7 boxes (derived, margin 1-10 px),
  U-Systems image-level labels;
* ``fedavg_pixel_only``: busbra_fedavg_pixel_only.yaml -- FedAvg trained on Toshiba_Aplio300 only;
* ``fedavg_full``: busbra_fedavg_full.yaml -- FedAvg with every site's masks (upper bound);
* optional ``fedmix_drop`` (``--methods``): FedMix with ``skipped: drop`` (a client that kept no
  pseudo-label is left out of the round's aggregation instead of sending its unchanged copy).

Reports the per-site test Dice of the global model (last round; checkpoints are never chosen on
test), mean +- sd (ddof=1) over seeds, and the mean over sites; results.json keeps every run.
Data are loaded once per seed and shared; a finished run is read back, an interrupted one resumes.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_fedmix.py [--rounds 10] [--seeds 0,1,2]
        [--methods fedmix,fedavg_pixel_only,fedavg_full] [--eval-every 5] [--out runs/bench_fedmix] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from fedseg.config import config_from_dict
from fedseg.data.build import build_federated_data
from fedseg.engine.rundir import read_metrics
from fedseg.runtime.sim import run_inprocess

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "fedmix"
METHODS: dict[str, tuple[str, dict[str, Any]]] = {  # name -> (preset, algorithm overrides)
    "fedmix": ("busbra.yaml", {}),
    "fedavg_pixel_only": ("busbra_fedavg_pixel_only.yaml", {}),
    "fedavg_full": ("busbra_fedavg_full.yaml", {}),
    "fedmix_drop": ("busbra.yaml", {"skipped": "drop"}),
}


def build_config(method: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    preset, algorithm = METHODS[method]
    cfg = yaml.safe_load((CONFIGS / preset).read_text())
    cfg["name"] = f"bench_fedmix_{method}"
    cfg["seed"] = seed
    cfg["federation"]["rounds"] = args.rounds
    cfg["eval"]["every"] = args.eval_every
    cfg["algorithm"] = {**cfg["algorithm"], **algorithm}
    cfg["data"]["root"] = str((ROOT / cfg["data"]["root"]).resolve())
    if args.smoke:
        supervision = cfg["data"].get("supervision")
        cfg["data"] = {"source": "synthetic",
                       "synthetic": {"num_sites": 3, "size": 16, "samples_per_site": [10, 8, 6]}}
        if supervision:
            cfg["data"]["supervision"] = {"site0": "box", "site1": "pixel", "site2": "image"}
        if "train_sites" in cfg["federation"]:
            cfg["federation"]["train_sites"] = ["site1"]
        cfg["model"] = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    return cfg


def summarise(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    records = read_metrics(run_dir / "metrics.jsonl")
    test = summary["test"].get("global", {})
    train = [r for r in records if r["kind"] == "train"]
    weights = [r for r in records if r["kind"] == "weights"]
    last = max((r["round"] for r in weights), default=None)
    return {
        "test_dice": {site: m["dice"] for site, m in test.items()},
        "mean_test_dice": statistics.fmean(m["dice"] for m in test.values()),
        "test_hd95": {site: m["hd95"] for site, m in test.items()},
        "seconds": sum(r["seconds"] for r in records if r["kind"] == "round"),
        "n_per_round": {site: [r["n"] for r in train if r["site"] == site] for site in sorted({r["site"] for r in train})},
        "last_weights": {r["site"]: round(r["weight"], 4) for r in weights if r["round"] == last},
    }


def table(results: dict[str, Any], methods: list[str], seeds: list[int]) -> str:
    """Markdown: per-site test Dice mean +- sd over seeds, and the mean over sites."""
    runs = results.get("runs", {})
    sites = sorted({s for r in runs.values() for s in r["test_dice"]})
    lines = ["| method | " + " | ".join(sites) + " | mean over sites |", "|---|" + "---:|" * (len(sites) + 1)]

    def cell(values: list[float]) -> str:
        if not values:
            return "–"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {sd:.3f}"

    for method in methods:
        done = [runs[f"{method}_s{s}"] for s in seeds if f"{method}_s{s}" in runs]
        cells = [cell([r["test_dice"][site] for r in done if site in r["test_dice"]]) for site in sites]
        lines.append(f"| {method} (n={len(done)}) | " + " | ".join(cells) + f" | {cell([r['mean_test_dice'] for r in done])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="fedmix,fedavg_pixel_only,fedavg_full")
    parser.add_argument("--eval-every", type=int, default=5, help="validation every k rounds (and at the last)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_fedmix")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data instead of BUS-BRA (checks the script)")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; allowed: {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)  # a shared 2-core machine: more threads oversubscribe it
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["machine"] = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    for seed in seeds:
        data_by_key: dict[str, Any] = {}
        for method in methods:
            cfg = config_from_dict(build_config(method, args, seed))
            run_dir = args.out / f"{method}_s{seed}"
            if (run_dir / "summary.json").is_file():
                summary = json.loads((run_dir / "summary.json").read_text())
            else:
                key = cfg.data.model_dump_json()  # weak and all-pixel data differ: one load per kind and seed
                if key not in data_by_key:
                    data_by_key[key] = build_federated_data(cfg.data, seed)
                start = time.perf_counter()
                resume = (run_dir / "checkpoints" / "last.pt").is_file()  # an interrupted run continues
                summary = run_inprocess(cfg, run_dir, data=data_by_key[key], resume=resume,
                                        command=" ".join(sys.argv), write_report=False).summary
                print(f"{method} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
            results.setdefault("runs", {})[f"{method}_s{seed}"] = summarise(run_dir, summary)
            results["table"] = table(results, methods, seeds)
            results_path.write_text(json.dumps(results, indent=2))
    print(results["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
