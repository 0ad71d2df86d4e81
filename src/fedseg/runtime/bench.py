"""``fedseg bench SUITE``: run a benchmark suite and write its results table and plots.

Each planned run (:func:`fedseg.runtime.bench_suite.plan_suite`) is an ordinary run directory
``OUT/<dataset>/<method>/s<seed>``, trained by the in-process engine in a child process
(:mod:`fedseg.runtime.bench_child`) so its peak RSS is its own. A run whose ``summary.json``
exists is skipped when its ``config.yaml`` equals the planned one (else refused: another
configuration); one with a checkpoint is resumed; any other is started. With ``loso: true`` the
global methods also get leave-one-site-out runs (:mod:`fedseg.runtime.loso`, under
``OUT/<dataset>/<method>/loso``) and their mean held-out Dice.

Results, under OUT: ``results.json`` (every run's record, the machine, the command),
``runs.csv`` (one row per run, every digit), ``summary.csv`` (mean and sd per dataset x method,
every digit), ``results.md`` (rounded) and ``plots/`` (per-site Dice bars, Dice vs bytes, Dice vs
wall time). :func:`write_doc_section` puts the table into docs/benchmarks.md between markers.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedseg.algorithms import build_algorithm
from fedseg.engine.rundir import RunDir
from fedseg.io.atomic import atomic_write_text
from fedseg.records import ModelKind
from fedseg.report.bench_table import aggregate, read_run, results_markdown, runs_csv, summary_csv
from fedseg.report.runs import ReportError
from fedseg.runtime.bench_child import train_one
from fedseg.runtime.bench_suite import PlannedRun, Suite, SuiteError
from fedseg.runtime.common import RunError, config_text
from fedseg.runtime.loso import collect, run_loso

__all__ = ["BenchResult", "run_state", "run_suite", "write_results", "machine_info", "RESULTS_FILES"]

RESULTS_FILES = ("results.json", "runs.csv", "summary.csv", "results.md")


@dataclass
class BenchResult:
    out: Path
    runs: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    trained: list[str] = field(default_factory=list)  # labels of the runs started or resumed now
    skipped: list[str] = field(default_factory=list)  # finished before this call
    plots: dict[str, Path] = field(default_factory=dict)


def run_state(run: PlannedRun) -> str:
    """``finished``, ``resume`` (a checkpoint exists) or ``new``.

    Raises:
        SuiteError: the directory holds a finished or checkpointed run of another configuration.
    """
    rd = RunDir(run.run_dir)
    if not rd.summary.is_file() and not rd.checkpoint.is_file():
        return "new"
    if not rd.config.is_file() or rd.config.read_text(encoding="utf-8") != config_text(run.config):
        what = "finished" if rd.summary.is_file() else "checkpointed"
        raise SuiteError(f"{run.run_dir} holds a {what} run of another configuration than the planned {run.label} "
                         f"(config.yaml differs); use another --out, or delete {run.run_dir}")
    return "finished" if rd.summary.is_file() else "resume"


def _train(run: PlannedRun, resume: bool, command: str, isolate: bool) -> None:
    """Train (or resume) one run in a child process (stdout and stderr pass through), or here."""
    if not isolate:
        train_one(run.config, run.run_dir, resume=resume, command=command, own_process=False)
        return
    args = [sys.executable, "-m", "fedseg.runtime.bench_child", str(run.run_dir), "--command", command,
            *(["--resume"] if resume else [])]
    env = {**os.environ}
    src = str(Path(__file__).resolve().parents[2])  # this checkout's sources first, as in the parent
    env["PYTHONPATH"] = os.pathsep.join([src, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    done = subprocess.run(args, input=config_text(run.config), text=True, env=env, check=False)
    if done.returncode != 0:
        raise RunError(f"{run.label}: the run failed (exit {done.returncode}); its directory {run.run_dir} is kept "
                       "and the next `fedseg bench` resumes it from its last checkpoint")


def _is_global(run: PlannedRun) -> bool:
    return str(build_algorithm(run.config.algorithm).judged_by) == ModelKind.GLOBAL


def _loso(suite: Suite, runs: Sequence[PlannedRun], out: Path, say: Callable[[str], None]) -> dict[tuple[str, str], float]:
    """Leave-one-site-out mean held-out Dice per (dataset, method) of the global methods."""
    scores: dict[tuple[str, str], float] = {}
    firsts: dict[tuple[str, str], PlannedRun] = {}
    seeds: dict[tuple[str, str], list[int]] = {}
    for r in runs:
        firsts.setdefault((r.dataset, r.method), r)
        seeds.setdefault((r.dataset, r.method), []).append(r.seed)
    for key, first in firsts.items():
        if not _is_global(first):
            say(f"loso: {first.dataset}/{first.method} is judged by personalised models, no LOSO row")
            continue
        folder = out / first.dataset / first.method / "loso"
        say(f"loso: {first.dataset}/{first.method} -> {folder}")
        run_loso(first.config, folder, seeds=seeds[key], notify=say)
        dice = [row.stats(row.dice)[0] for row in collect(first.config, folder, seeds[key])]  # per held-out site
        scores[key] = sum(dice) / len(dice) if dice else float("nan")
    return scores


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, torch version, commit (when in a git checkout) and UTC date."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except OSError:
        commit = None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit, "gpu": torch.cuda.is_available(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_results(suite: Suite, runs: Sequence[PlannedRun], out: Path, command: str,
                  loso: dict[tuple[str, str], float] | None = None, plots: bool = True) -> BenchResult:
    """Read every finished planned run and write the results files and plots (module docstring)."""
    records = []
    for r in runs:
        if not RunDir(r.run_dir).summary.is_file():
            continue
        try:
            record = read_run(r.run_dir, r.dataset, r.method, r.seed)
        except ReportError as exc:
            raise RunError(f"{r.label}: {exc}") from None
        record["loso_dice"] = (loso or {}).get((r.dataset, r.method))
        records.append(record)
    rows = aggregate(records)
    out.mkdir(parents=True, exist_ok=True)
    info = {"suite": suite.name, "suite_file": str(suite.path), "command": command, "machine": machine_info(),
            "description": suite.description, "budget": suite.budget, "runs": records}
    atomic_write_text(out / "results.json", json.dumps(info, indent=2, default=str))
    atomic_write_text(out / "runs.csv", runs_csv(records))
    atomic_write_text(out / "summary.csv", summary_csv(rows))
    atomic_write_text(out / "results.md", f"# Benchmark suite `{suite.name}`\n\n{command}\n\n" + results_markdown(rows))
    written: dict[str, Path] = {}
    if plots and rows:
        from fedseg.report.bench_plots import write_bench_plots

        written = write_bench_plots(rows, out / "plots")
    return BenchResult(out, records, rows, plots=written)


def run_suite(suite: Suite, runs: Sequence[PlannedRun], out: Path, *, command: str,
              notify: Callable[[str], None] | None = None, plots: bool = True, isolate: bool = True) -> BenchResult:
    """Train every unfinished planned run (skip finished ones, resume killed ones), then write the results.

    Args:
        command: the ``fedseg bench`` command line, recorded in results.json and each run's command.txt.
        notify: receives one ``[i/N] ...`` line per run.
        isolate: a child process per run (its own peak RSS); False: every run in this process
            (quicker to start; no peak RSS is recorded).

    Raises:
        SuiteError: a run directory holds another configuration's finished run (before anything trains).
        RunError: a run failed (the message names it; a rerun resumes it).
    """
    say = notify or (lambda _: None)
    states = [run_state(r) for r in runs]  # every conflict is refused before any run starts
    trained, skipped = [], []
    for i, (run, state) in enumerate(zip(runs, states, strict=True), 1):
        head = f"[{i}/{len(runs)}] {run.label}"
        if state == "finished":
            say(f"{head}: finished, skipped")
            skipped.append(run.label)
            continue
        say(f"{head}: {'resuming' if state == 'resume' else 'training'} -> {run.run_dir}")
        _train(run, state == "resume", f"{command}  # run {run.label}", isolate)
        trained.append(run.label)
    loso = _loso(suite, runs, out, say) if suite.loso else None
    result = write_results(suite, runs, out, command, loso, plots=plots)
    result.trained, result.skipped = trained, skipped
    return result
