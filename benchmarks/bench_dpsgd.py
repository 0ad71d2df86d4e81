"""Sample-level DP-SGD: test Dice of a small synthetic FedAvg run without and with DP-SGD.

Synthetic 2D data (3 sites, 32x32, the default site sizes), a U-Net with GroupNorm, FedAvg with
10 rounds of 1 local epoch, batch 8; DP-SGD with ``max_grad_norm`` 1 and several noise
multipliers. One seed (a figure, not a benchmark with error bars). Prints one JSON line per
setting: mean test Dice of the global model and each site's final epsilon. Alone:

    OMP_NUM_THREADS=1 python benchmarks/bench_dpsgd.py [--rounds 10] [--noise 0.5 1.0] [--out runs/bench_dpsgd]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from fedseg.config import config_from_dict
from fedseg.runtime.sim import run_inprocess


def _config(rounds: int, seed: int, sample: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "dpsgd", "seed": seed,
        "data": {"source": "synthetic", "synthetic": {"num_sites": 3, "spatial_dims": 2, "size": 32}},
        "model": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "norm": "group"},
        "train": {"batch_size": 8, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9},
        "federation": {"rounds": rounds, "local_epochs": 1},
        "eval": {"every": rounds, "select": "last"},
        "algorithm": {"name": "fedavg"},
        "privacy": {"sample": sample},
    }


def run(rounds: int, seed: int, noises: list[float], out: Path) -> list[dict[str, Any]]:
    """One run per setting: ``off`` (no DP-SGD), clipping only (z = 0), and each noise multiplier."""
    settings: list[tuple[str, dict[str, Any]]] = [("off", {"enabled": False}),
                                                  ("clip only, z=0", {"enabled": True, "noise_multiplier": 0.0})]
    settings += [(f"z={z}", {"enabled": True, "noise_multiplier": z}) for z in noises]
    rows = []
    for name, sample in settings:
        run_dir = out / name.replace(" ", "_").replace(",", "").replace("=", "")
        shutil.rmtree(run_dir, ignore_errors=True)
        start = time.perf_counter()
        result = run_inprocess(config_from_dict(_config(rounds, seed, sample)), run_dir, write_report=False)
        summary = result.summary
        eps = {site: round(v["sample_epsilon"], 2) for site, v in summary.get("sample_privacy", {}).items()}
        rows.append({"setting": name, "dice": round(summary["mean"]["global"]["dice"], 4), "epsilon": eps,
                     "delta": {s: round(v["sample_delta"], 5) for s, v in summary.get("sample_privacy", {}).items()},
                     "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)  # noqa: T201 (a script, not library code)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_dpsgd"))
    args = parser.parse_args()
    run(args.rounds, args.seed, args.noise, args.out)


if __name__ == "__main__":
    main()
