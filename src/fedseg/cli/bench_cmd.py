"""``fedseg bench SUITE [--seeds 0,1,2] [--out DIR] [--set K=V ...] [--only m,...] [--datasets d,...]
[--dry-run] [--doc FILE]``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["bench"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True)


def _ints(text: str | None, option: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        err_console.print(f"[bold red]error:[/] {option} {escape(text)}: expected comma-separated integers, e.g. 0,1,2")
        raise typer.Exit(2) from None


def bench(
    suite: Annotated[str, typer.Argument(help="a suite name (configs/bench/NAME.yaml) or a suite file")],
    seeds: Annotated[str | None, typer.Option("--seeds", help="comma-separated seeds (default: the suite's)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="results folder (default runs/bench/SUITE)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override of every run, e.g. federation.rounds=1")]
    = None,
    only: Annotated[str | None, typer.Option("--only", help="comma-separated methods of the suite")] = None,
    datasets: Annotated[str | None, typer.Option("--datasets", help="comma-separated datasets of the suite")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the planned runs and their state; train nothing")]
    = False,
    doc: Annotated[Path | None, typer.Option("--doc", help="also write the table into this markdown file's marked "
                                             "section (e.g. docs/benchmarks.md)")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write the plots")] = True,
    in_process: Annotated[bool, typer.Option("--in-process", help="train every run in this process (quicker to "
                                             "start; no peak RSS is measured)")] = False,
) -> None:
    """Run a benchmark suite: every method x dataset x seed as an ordinary run directory
    OUT/<dataset>/<method>/s<seed> (a child process each), skipping finished runs and resuming
    killed ones; then one results table (runs.csv, summary.csv, results.md) and plots."""
    from fedseg.algorithms import AlgorithmConfigError
    from fedseg.config import ConfigError
    from fedseg.data.base import DataError
    from fedseg.registry import UnknownNameError
    from fedseg.report.bench_doc import render_section, update_doc
    from fedseg.report.runs import ReportError
    from fedseg.runtime.bench import run_state, run_suite
    from fedseg.runtime.bench_suite import find_suite, load_suite, plan_suite
    from fedseg.runtime.common import RunError

    seed_list = _ints(seeds, "--seeds")
    overrides = set_ or []
    try:
        path = find_suite(suite)
        spec = load_suite(path)
        out_dir = out or Path("runs") / "bench" / spec.name
        planned = plan_suite(spec, out_dir, seeds=seed_list, only=[m for m in (only or "").split(",") if m],
                             overrides=overrides, datasets=[d for d in (datasets or "").split(",") if d])
        command = " ".join(shlex.quote(a) for a in (
            "fedseg", "bench", suite, *(["--seeds", seeds] if seeds else []), "--out", str(out_dir),
            *[x for s in overrides for x in ("--set", s)], *(["--only", only] if only else []),
            *(["--datasets", datasets] if datasets else [])))
        if dry_run:
            table = Table(title=f"suite {spec.name} ({path}): {len(planned)} planned runs under {out_dir}")
            for column in ("#", "run", "algorithm", "model", "state"):
                table.add_column(column)
            for i, run in enumerate(planned, 1):
                table.add_row(str(i), run.label, str(run.config.algorithm["name"]), run.config.model.name,
                              run_state(run))
            console.print(table)
            if spec.budget:
                console.print(f"budget: {escape(spec.budget)}")
            return
        result = run_suite(spec, planned, out_dir, command=command, notify=lambda line: console.print(escape(line)),
                           plots=plots, isolate=not in_process)
        if doc is not None:
            import json

            from fedseg.report.bench_table import results_markdown

            info = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
            update_doc(doc, spec.name, render_section(spec.name, results_markdown(result.rows), info, result.plots, doc))
            console.print(f"updated the `{spec.name}` section of {doc}")
    except (RunError, ConfigError, DataError, AlgorithmConfigError, UnknownNameError, ReportError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print((out_dir / "results.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"trained {len(result.trained)}, skipped {len(result.skipped)} finished; results: {out_dir}")
