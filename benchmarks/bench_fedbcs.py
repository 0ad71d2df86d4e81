"""FedBCS benchmark on BUS-BRA (3 scanner sites): FedAvg vs FedProto vs FPL vs FedBCS and its ablations.

Not part of `make bench` (7 federations per seed; see docs/benchmarks.md, section FedBCS).

Every run uses configs/fedbcs/busbra.yaml (the ``fedbcs_unet`` U-Net, Adam 1e-4, wd 1e-4, batch 6,
fixed ``eval.batch_size``, ``eval.select: best_val``) with only these changes:

* ``fedavg``: ``algorithm.name: fedavg``, ``model.fsr: false`` (the plain U-Net FedBCS builds on);
* ``fedproto``, ``fpl``: the prototype baselines, default parameters, ``model.fsr: false``;
* ``fedbcs``: the full method (FSR, encoder and decoder prototype levels);
* ``fedbcs_nofsr``: ``model.fsr: false``;
* ``fedbcs_enc`` / ``fedbcs_dec``: ``algorithm.levels: [encoder]`` / ``[decoder]``;
* optional ``fedavg_fsr`` (``--methods``): FedAvg on the U-Net with FSR.

A method whose algorithm is not registered (``fedseg algorithms``) is skipped with a message.
Each run is a subprocess of this script (``--one``), so its peak memory (``resource.getrusage``
``ru_maxrss``) is its own: the table gives the peak and the increase over the peak after the data
were loaded (the training part). Per-round time is the mean of the ``round`` records' seconds.
Dice and HD95 are the per-site test metrics of the global model at the round with the best mean
validation Dice (mean +- sd over seeds, ddof=1). A run with ``summary.json`` is not run again; an
interrupted one resumes from its last checkpoint. Writes OUT/results.json and OUT/fedbcs.md.

Usage:
    OMP_NUM_THREADS=1 FEDSEG_CACHE_DIR=... python benchmarks/bench_fedbcs.py [--rounds 20]
        [--seeds 0,1,2] [--size 128] [--methods fedavg,fedproto,...] [--features 32,64,128,256,512]
        [--out runs/bench_fedbcs]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from fedseg.algorithms.registry import ALGORITHMS
from fedseg.config import config_from_dict
from fedseg.data.build import build_federated_data
from fedseg.engine.rundir import read_metrics
from fedseg.io.atomic import atomic_write_text
from fedseg.records import Field, Kind, SummaryKey
from fedseg.runtime.sim import run_inprocess

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "fedbcs" / "busbra.yaml"
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # name -> (algorithm, model overrides)
    "fedavg": ({"name": "fedavg"}, {"fsr": False}),
    "fedproto": ({"name": "fedproto"}, {"fsr": False}),
    "fpl": ({"name": "fpl"}, {"fsr": False}),
    "fedbcs": ({"name": "fedbcs"}, {}),
    "fedbcs_nofsr": ({"name": "fedbcs"}, {"fsr": False}),
    "fedbcs_enc": ({"name": "fedbcs", "levels": ["encoder"]}, {}),
    "fedbcs_dec": ({"name": "fedbcs", "levels": ["decoder"]}, {}),
    "fedavg_fsr": ({"name": "fedavg"}, {}),
}
DEFAULT_METHODS = "fedavg,fedproto,fpl,fedbcs,fedbcs_nofsr,fedbcs_enc,fedbcs_dec"


def build_config(method: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The preset with the method's algorithm/model overrides and the command line's sizes."""
    algorithm, model = METHODS[method]
    cfg: dict[str, Any] = yaml.safe_load(PRESET.read_text(encoding="utf-8"))
    cfg["name"] = f"bench_fedbcs_{method}"
    cfg["seed"] = seed
    cfg["federation"]["rounds"] = args.rounds
    cfg["algorithm"] = dict(algorithm)
    cfg["model"].update(model)
    if args.features:
        cfg["model"]["features"] = [int(f) for f in args.features.split(",")]
    if args.fusion_channels:
        cfg["model"]["fusion_channels"] = args.fusion_channels
    cfg["data"]["root"] = str((ROOT / cfg["data"]["root"]).resolve())
    cfg["data"]["preprocess"]["target_shape"] = [args.size, args.size]
    return cfg


def _maxrss_mb() -> float:
    """This process's peak resident memory in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def run_one(method: str, seed: int, args: argparse.Namespace) -> None:
    """One run in this (child) process; writes RUN_DIR/memory.json beside the run's records."""
    torch.set_num_threads(1)
    cfg = config_from_dict(build_config(method, args, seed))
    run_dir = args.out / f"{method}_s{seed}"
    data = build_federated_data(cfg.data, seed)
    after_data = _maxrss_mb()
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    run_inprocess(cfg, run_dir, data=data, resume=resume, command=" ".join(sys.argv), write_report=False)
    memory = {"peak_mb": _maxrss_mb(), "after_data_mb": after_data}
    atomic_write_text(run_dir / "memory.json", json.dumps(memory))


def summarise(run_dir: Path) -> dict[str, Any]:
    """Per-site test Dice/HD95 of the judged-by model at the selected round, time and memory."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    test = summary[SummaryKey.TEST][summary[SummaryKey.JUDGED_BY]]
    rounds = [float(r[Field.SECONDS]) for r in read_metrics(run_dir / "metrics.jsonl") if r[Field.KIND] == Kind.ROUND]
    memory_path = run_dir / "memory.json"
    memory = json.loads(memory_path.read_text(encoding="utf-8")) if memory_path.is_file() else {}
    return {
        "dice": {site: float(m[Field.DICE]) for site, m in test.items()},
        "hd95": {site: float(m[Field.HD95]) for site, m in test.items()},
        "selected_round": summary[SummaryKey.SELECTION].get("round"),
        "round_seconds": statistics.fmean(rounds) if rounds else float("nan"),
        "peak_mb": memory.get("peak_mb", float("nan")),
        "train_mb": memory.get("peak_mb", float("nan")) - memory.get("after_data_mb", float("nan")),
    }


def _cell(values: list[float], digits: int = 3) -> str:
    """``mean ± sd`` of the finite values; NaN ones (none expected: the project's HD95 is finite
    on empty masks) are left out and counted, ``[k n/a]``, never silently."""
    finite = [v for v in values if v == v]
    missing = f" [{len(values) - len(finite)} n/a]" if len(finite) < len(values) else ""
    if not finite:
        return "–" + missing
    sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.fmean(finite):.{digits}f} ± {sd:.{digits}f}" + missing


def table(runs: dict[str, dict[str, Any]], methods: list[str], seeds: list[int]) -> str:
    """Markdown: per-site test Dice and HD95 (mean +- sd over seeds), their site means, per-round
    time and peak memory, each with its ratio to FedAvg when FedAvg ran."""
    sites = sorted({s for r in runs.values() for s in r["dice"]})
    head = (["method (seeds)"] + [f"Dice {s}" for s in sites] + ["mean Dice"] + [f"HD95 {s}" for s in sites]
            + ["mean HD95", "s / round", "peak MiB", "train MiB"])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    base = [runs[f"fedavg_s{s}"] for s in seeds if f"fedavg_s{s}" in runs]

    def ratio(method: str, values: list[float], key: str) -> str:
        ref = [r[key] for r in base]
        if not base or not values or method == "fedavg":
            return ""
        return f" (x{statistics.fmean(values) / statistics.fmean(ref):.2f})"

    for method in methods:
        done = [runs[f"{method}_s{s}"] for s in seeds if f"{method}_s{s}" in runs]
        if not done:
            continue
        cells = [_cell([r["dice"][s] for r in done if s in r["dice"]]) for s in sites]
        cells.append(_cell([statistics.fmean(r["dice"].values()) for r in done]))
        cells += [_cell([r["hd95"][s] for r in done if s in r["hd95"]], 1) for s in sites]
        cells.append(_cell([statistics.fmean(r["hd95"].values()) for r in done], 1))
        for key, digits in (("round_seconds", 1), ("peak_mb", 0), ("train_mb", 0)):
            values = [r[key] for r in done]
            cells.append(_cell(values, digits) + ratio(method, values, key))
        lines.append(f"| {method} ({len(done)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--size", type=int, default=128, help="square input size (a multiple of 16)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument("--features", default="", help="model.features, e.g. 4,8,16 for a smoke run")
    parser.add_argument("--fusion-channels", type=int, default=0, help="model.fusion_channels (default: preset)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_fedbcs")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args.one[0], int(args.one[1]), args)
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; allowed: {', '.join(METHODS)}")
    registered = set(ALGORITHMS.names())
    for method in [m for m in methods if METHODS[m][0]["name"] not in registered]:
        print(f"skipping {method}: algorithm {METHODS[method][0]['name']!r} is not registered", flush=True)
    methods = [m for m in methods if METHODS[m][0]["name"] in registered]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    results["machine"] = {"platform": platform.platform(), "torch": torch.__version__}
    results["args"] = {k: str(v) for k, v in vars(args).items() if k != "one"}
    passthrough = ["--rounds", str(args.rounds), "--size", str(args.size), "--out", str(args.out),
                   "--features", args.features, "--fusion-channels", str(args.fusion_channels)]
    for seed in seeds:
        for method in methods:
            run_dir = args.out / f"{method}_s{seed}"
            if not (run_dir / "summary.json").is_file():
                print(f"{method} seed {seed}: running", flush=True)
                subprocess.run([sys.executable, __file__, *passthrough, "--one", method, str(seed)], check=True)
            else:
                print(f"{method} seed {seed}: done, read back", flush=True)
            results.setdefault("runs", {})[f"{method}_s{seed}"] = summarise(run_dir)
            results["table"] = table(results["runs"], methods, seeds)
            atomic_write_text(results_path, json.dumps(results, indent=2))
            atomic_write_text(args.out / "fedbcs.md", results["table"])
    print(results.get("table", "no runs"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
