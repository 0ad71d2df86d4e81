"""One benchmark run in its own process: ``python -m fedseg.runtime.bench_child RUN_DIR [--resume]``.

The suite runner (:mod:`fedseg.runtime.bench`) starts this module once per run, so each run's peak
resident memory (``ru_maxrss``) is its own, as in ``benchmarks/bench_fedbcs.py --one``. The
resolved configuration arrives as YAML on stdin (``config.yaml``'s text); the run is an ordinary
in-process ``fedseg run`` directory, and ``bench.json`` beside its records holds the peak RSS
(MiB) and the process's wall time (seconds).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import yaml

from fedseg.config import RunConfig, config_from_dict
from fedseg.io.atomic import atomic_write_text
from fedseg.report.bench_table import BENCH_FILE
from fedseg.runtime.sim import run_inprocess

__all__ = ["peak_rss_mb", "train_one", "main"]


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def train_one(cfg: RunConfig, run_dir: Path, *, resume: bool, command: str | None, own_process: bool) -> None:
    """Train (or resume) one run here and write its ``bench.json``; the peak RSS only when this
    process ran nothing else (``own_process``), else None (it would be the whole suite's)."""
    start = time.perf_counter()
    run_inprocess(cfg, run_dir, resume=resume, command=command, write_report=own_process)
    extra = {"peak_rss_mb": peak_rss_mb() if own_process else None, "wall_seconds": time.perf_counter() - start,
             "resumed": resume}
    atomic_write_text(run_dir / BENCH_FILE, json.dumps(extra, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one fedseg bench run (config YAML on stdin)")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--command", default=None, help="the equivalent fedseg command, for command.txt")
    args = parser.parse_args(argv)
    cfg = config_from_dict(yaml.safe_load(sys.stdin.read()))
    train_one(cfg, args.run_dir, resume=args.resume, command=args.command, own_process=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
