"""One benchmark run in its own process: ``python -m fedseg.runtime.bench_child RUN_DIR [--resume]``.

The suite runner (:mod:`fedseg.runtime.bench`) starts this module once per run, so each run's peak
resident memory (``ru_maxrss``) is its own, as in ``benchmarks/bench_fedbcs.py --one``. The
resolved configuration arrives as YAML on stdin (``config.yaml``'s text); the run is an ordinary
``fedseg run`` directory on the engine its ``engine`` key names (``inprocess``, or ``flower-sim``:
Flower's simulation runtime with Ray), and ``bench.json`` beside its records holds the peak
memory (MiB) and the process's wall time (seconds).

Memory in ``bench.json``: ``peak_rss_mb`` is this process's ``ru_maxrss`` on the in-process engine;
on ``flower-sim`` (whose Ray workers are other processes) it is the sampled peak of the whole
process tree's summed RSS. Both engines also record the tree's sampled peaks
(:class:`fedseg.runtime.bench_memory.TreeMemory`, every second): ``peak_tree_rss_mb`` (summed RSS:
shared pages counted once per process), ``peak_tree_pss_mb`` (summed PSS: shared pages divided
among their processes), ``tree_processes`` (most processes at once) and ``peak_tree_parts_mb``
(at the RSS peak: each process name's summed RSS). Processes of the tree
still running when the run has returned (Flower's Ray actors can outlive it by minutes) are ended
before the next run starts (``ended_processes``: how many).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import yaml

from fedseg.config import RunConfig, config_from_dict
from fedseg.io.atomic import atomic_write_text
from fedseg.report.bench_table import BENCH_FILE
from fedseg.runtime.bench_memory import TreeMemory, end_processes
from fedseg.runtime.sim import run_inprocess

__all__ = ["peak_rss_mb", "train_one", "main", "TREE_INTERVAL"]

logger = logging.getLogger(__name__)

TREE_INTERVAL = 1.0
"""Seconds between two samples of the process tree's memory."""


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _run(cfg: RunConfig, run_dir: Path, *, resume: bool, command: str | None, own_process: bool) -> None:
    """Train (or resume) on the engine ``cfg.engine`` names."""
    if cfg.engine == "flower-sim":
        from fedseg.runtime.flower.simulation import run_flower_simulation  # imports flwr: only when asked

        run_flower_simulation(cfg, run_dir, resume=resume, command=command, write_report=own_process)
    else:
        run_inprocess(cfg, run_dir, resume=resume, command=command, write_report=own_process)


def train_one(cfg: RunConfig, run_dir: Path, *, resume: bool, command: str | None, own_process: bool) -> None:
    """Train (or resume) one run here and write its ``bench.json`` (module docstring); the memory
    figures only when this process ran nothing else (``own_process``), else None (they would be the
    whole suite's)."""
    start = time.perf_counter()
    tree = TreeMemory(interval=TREE_INTERVAL)
    left: list[int] = []
    if own_process:
        with tree:
            _run(cfg, run_dir, resume=resume, command=command, own_process=own_process)
        left = tree.survivors()
        if left:  # Ray actors outlive flower-sim runs (bench_memory): end them before the next run
            logger.warning("%d process(es) of this run still running after it (pids %s): ending them",
                           len(left), ", ".join(map(str, left)))
            end_processes(left)
    else:
        _run(cfg, run_dir, resume=resume, command=command, own_process=own_process)
    own = peak_rss_mb() if own_process else None
    extra = {"engine": cfg.engine,
             "peak_rss_mb": tree.peak.rss_mb if own_process and cfg.engine == "flower-sim" else own,
             "peak_tree_rss_mb": tree.peak.rss_mb, "peak_tree_pss_mb": tree.peak.pss_mb,
             "tree_processes": tree.peak.processes or None, "ended_processes": len(left),
             "peak_tree_parts_mb": tree.peak.parts or None,
             "wall_seconds": time.perf_counter() - start, "resumed": resume}
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
