"""``fedseg loso CONFIG [--out DIR] [--seeds S ...] [--set KEY=VALUE ...]``: leave-one-site-out evaluation."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["loso"]

console = Console(soft_wrap=True)  # paths and one-line messages are never broken
err_console = Console(stderr=True)


def loso(
    config: Annotated[Path, typer.Argument(help="YAML run configuration")],
    out: Annotated[Path | None, typer.Option("--out", help="folder of the held-out runs and the table")] = None,
    seeds: Annotated[list[int] | None, typer.Option("--seeds", help="seed to run (repeat for several); "
                                                    "default: the config's")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. federation.rounds=5")] = None,
) -> None:
    """Leave-one-site-out: train once per data site with every other site (federation.train_sites),
    score the held-out site with the method's unseen-site model, and write loso.csv and loso.md.

    Finished held-out runs (summary.json present) are skipped, interrupted ones resumed."""
    from fedseg.algorithms import AlgorithmConfigError
    from fedseg.cli.progress import RichProgress
    from fedseg.config import ConfigError, RunConfig, load_config
    from fedseg.data.base import DataError
    from fedseg.registry import UnknownNameError
    from fedseg.runtime.loso import loso_markdown, run_loso
    from fedseg.runtime.sim import RunError

    overrides = set_ or []
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    out_dir = out or Path("runs") / f"loso_{cfg.name}_{cfg.algorithm['name']}"

    def command(held: RunConfig, run_dir: Path) -> str:  # the equivalent single run, for command.txt
        train = "[" + ",".join(held.federation.train_sites or []) + "]"
        sets = [*overrides, f"federation.train_sites={train}", f"seed={held.seed}"]
        return " ".join(shlex.quote(a) for a in ("fedseg", "run", str(config), *[x for s in sets for x in ("--set", s)],
                                                 "--out", str(run_dir)))

    try:
        result = run_loso(cfg, out_dir, seeds=seeds, progress=RichProgress,
                          notify=lambda line: console.print(escape(line)), command=command)
    except (RunError, DataError, ConfigError, AlgorithmConfigError, UnknownNameError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1 if isinstance(exc, DataError) else 2) from None  # exit codes: fedseg -h
    console.print(loso_markdown(result.rows, "Leave-one-site-out"), markup=False, highlight=False)
    console.print(f"table: {result.csv_path}  {result.markdown_path}")
