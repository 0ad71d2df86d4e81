"""Peak memory of FedBCS local training with and without random pixel subsampling (issue 12 item 3).

Each configuration runs in its own subprocess (``--one``) so that ``ru_maxrss`` is its own: 2
rounds (prototypes are used from round 2 on) of ``fedbcs`` on embedded synthetic 2D data (2 sites,
``--size`` px, ``--images`` images each), the authors' U-Net width (features 32..512, fusion 256),
batch 6. Reported: peak RSS of the run and its increase over the RSS after the data were built
("train MiB"), and seconds per round, for ``algorithm.num_pixels`` null (every foreground pixel,
the default) and each given value; FedAvg on the same model is the reference row.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_fedbcs_memory.py [--size 128] [--images 12]
        [--num-pixels 1024,4096] [--out runs/bench_fedbcs_memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.io.atomic import atomic_write_text
from fedseg.records import Field, Kind


def _config(size: int, images: int, algorithm: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "fedbcs_memory", "seed": 0,
        "data": {"source": "synthetic", "synthetic": {"num_sites": 2, "size": size, "samples_per_site": [images] * 2}},
        "model": {"name": "fedbcs_unet", "fsr": algorithm["name"] == "fedbcs"},
        "train": {"batch_size": 6, "optimizer": "adam", "lr": 1e-4},
        "federation": {"rounds": 2, "local_epochs": 1},
        "eval": {"every": 2, "batch_size": 6},
        "algorithm": algorithm,
    }


def _one(raw: str) -> None:
    from fedseg.data.build import build_federated_data
    from fedseg.runtime.sim import run_inprocess

    cfg = config_from_dict(json.loads(raw))
    data = build_federated_data(cfg.data, cfg.seed)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        run_inprocess(cfg, Path(tmp) / "run", data=data, write_report=False)
        rounds = [r for r in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if r.get(Field.KIND) == Kind.ROUND]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = [float(r[Field.SECONDS]) for r in rounds if Field.SECONDS in r]
    print(json.dumps({"peak_mib": peak, "train_mib": peak - base, "s_per_round": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--num-pixels", default="1024,4096")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_fedbcs_memory"))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        _one(args.one)
        return
    rows: list[tuple[str, dict[str, Any]]] = [("fedavg", {"name": "fedavg"}), ("fedbcs, num_pixels null", {"name": "fedbcs"})]
    rows += [(f"fedbcs, num_pixels {n}", {"name": "fedbcs", "num_pixels": int(n)}) for n in args.num_pixels.split(",") if n]
    results = []
    for label, algorithm in rows:
        raw = json.dumps(_config(args.size, args.images, algorithm))
        out = subprocess.run([sys.executable, __file__, "--one", raw], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append({"row": label, **result})
        print(label, result, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=1))
    lines = ["| configuration | peak MiB | train MiB | s / round (round 2) |", "|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['peak_mib']:.0f} | {r['train_mib']:.0f} | {r['s_per_round'][-1]:.1f} |")
    atomic_write_text(args.out / "memory.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
