"""``fedseg`` CLI: run, demo, algorithms, eval, report.

Conventions (``fedseg --help``): ``-h``/``--help`` everywhere, ``--version``, shell completion
(``--install-completion``), fixed choices for ``--engine`` and ``--split``, and exit codes
:data:`USAGE` (2) for a refused command line, configuration or run directory and :data:`FAILED` (1)
for data that cannot be used and runs that fail.
"""

from __future__ import annotations

import logging
import shlex
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedseg.cli import (
    bench_cmd,
    certs_cmd,
    data_cmd,
    evaluate_folder_cmd,
    export_cmd,
    flower_cmd,
    loso_cmd,
    plan_cmd,
    predict_cmd,
)
from fedseg.records import Split

__all__ = ["app", "Engine", "USAGE", "FAILED"]

USAGE = 2
"""Exit code: the command line, the configuration or the run directory was refused; nothing ran."""
FAILED = 1
"""Exit code: the data cannot be used, or a run, evaluation or Flower federation failed."""

HELP = "\n\n".join([
    "Federated medical image segmentation.",
    "Exit codes: 0 success; 2 usage error (a bad option, argument or choice, an invalid configuration, a missing "
    "file or folder named by them, a run directory that does not fit the request: nothing ran); 1 data or run error "
    "(data that cannot be used; a run, evaluation or Flower site that failed; `fedseg data check` finding errors).",
    "Shell completion: fedseg --install-completion (bash, zsh, fish, PowerShell).",
])


class _Choice(click.Choice):  # type: ignore[type-arg]
    """A fixed set of values whose refusal lists them the way fedseg's other errors do, plus a hint."""

    def __init__(self, choices: list[str], hint: str = "") -> None:
        super().__init__(choices)
        self.hint = hint

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        return f"{value!r}: allowed {', '.join(map(str, self.choices))}{self.hint}"


class Engine(StrEnum):
    """``fedseg run --engine``: the engines a command line starts (a deployment runs with ``flwr run``)."""

    INPROCESS = "inprocess"
    FLOWER_SIM = "flower-sim"


app = typer.Typer(no_args_is_help=True, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
console = Console(soft_wrap=True)  # paths and one-line messages are never broken
err_console = Console(stderr=True)


def _fail(message: str, code: int = USAGE) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _command_line(*args: str | Path | None) -> str:
    """The command as the user would type it (rebuilt from the parsed arguments)."""
    return " ".join(shlex.quote(str(a)) for a in ("fedseg", *args) if a is not None)


def _metrics_table(title: str, rows: list[dict[str, Any]], first: str = "site") -> Table:
    table = Table(title=title)
    cols = [first, *[c for c in ("model", "selected_round") if any(c in r for r in rows)],
            "n", "dice", "iou", "hd95", "precision", "recall"]
    for c in cols:
        table.add_column("HD95 (mm)" if c == "hd95" else c, justify="left" if c == first else "right")
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                cells.append(f"{v:.2f}" if c == "hd95" else f"{v:.3f}")
            else:
                cells.append("–" if v is None else str(v))
        table.add_row(*cells)
    return table


def _print_version(value: bool) -> None:
    if value:
        from fedseg.io.packages import package_versions

        v = package_versions()
        console.print(f"fedseg {v['fedseg']} (torch {v['torch']}, MONAI {v['monai']}, flwr {v['flwr']}, "
                      f"Python {v['python']})", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the versions of fedseg, torch, MONAI, flwr and exit")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def algorithms() -> None:
    """List the registered algorithms with a one-line description."""
    from fedseg.algorithms import ALGORITHMS

    table = Table(title="fedseg algorithms")
    table.add_column("name")
    table.add_column("description")
    for name in ALGORITHMS.names():
        table.add_row(name, ALGORITHMS.get(name).description)
    console.print(table)


def _run(cfg_path: Path | None, overrides: list[str], resume: bool, out: Path | None,
         engine: str | None = None, plans: Path | None = None) -> Path:
    from fedseg.algorithms import AlgorithmConfigError, build_algorithm
    from fedseg.cli.progress import RichProgress
    from fedseg.codecs import check_codec_config
    from fedseg.config import ConfigError, load_config
    from fedseg.data.base import DataError
    from fedseg.engine.dpsgd import check_sample_dp
    from fedseg.registry import UnknownNameError
    from fedseg.runtime.flower.executor import FlowerRunError
    from fedseg.runtime.sim import RunError, run_inprocess

    try:  # everything a config can get wrong, before any data is loaded
        cfg = load_config(cfg_path, overrides) if plans is None else _planned(cfg_path, plans, overrides)
        check_sample_dp(cfg, build_algorithm(cfg.algorithm))  # DP-SGD refuses some algorithms before data loads
        check_codec_config(cfg.codec)
    except (ConfigError, AlgorithmConfigError, UnknownNameError) as exc:
        _fail(str(exc))
        raise AssertionError from None
    missing = _missing_files(cfg)
    if missing:
        _fail("; ".join(missing))
    run_dir = out or Path("runs") / f"{cfg.name}_{cfg.algorithm['name']}_s{cfg.seed}"
    if engine not in (None, "inprocess", "flower-sim"):
        _fail(f"--engine {engine!r}: allowed inprocess, flower-sim (a deployment is submitted with flwr run, "
              "see docs/deployment.md)")
    try:
        sets = [x for item in overrides for x in ("--set", item)]
        command = _command_line("run", cfg_path, *sets, "--resume" if resume else None,
                                "--out" if out else None, out, "--engine" if engine else None, engine,
                                "--plans" if plans else None, plans)
        if (engine or cfg.engine) != "inprocess":
            from fedseg.cli.flower_cmd import run_flower_engine

            summary = run_flower_engine(cfg, run_dir, engine=engine or cfg.engine, resume=resume, command=command)
        else:
            summary = run_inprocess(cfg, run_dir, resume=resume, command=command, progress=RichProgress()).summary
    except (DataError, FlowerRunError) as exc:  # the data, or a site of the federation, failed
        _fail(str(exc), FAILED)
        raise AssertionError from None
    except (RunError, ConfigError) as exc:  # the request does not fit the run directory or the engine
        _fail(str(exc))
        raise AssertionError from None
    _print_summary(summary, run_dir)
    return run_dir


def _planned(cfg_path: Path | None, plans: Path, overrides: list[str]) -> Any:
    """The config under a plans file (docs/planning.md: plan < config file < --set)."""
    from fedseg.config import ConfigError
    from fedseg.planning import PlanError, load_planned_config

    try:
        return load_planned_config(cfg_path, plans, overrides)
    except PlanError as exc:
        raise ConfigError(str(exc)) from None


def _missing_files(cfg: Any) -> list[str]:
    """The files and folders this machine's run reads that are not there, each with its key (so a
    typo is reported before any case is decoded, not after)."""
    wanted: list[tuple[str, Any, bool]] = [
        ("model.init_checkpoint", cfg.model.init_checkpoint, False),
        ("data.split_file", cfg.data.split_file, False),
    ]
    if cfg.data.source == "folder":
        wanted.append(("data.root", cfg.data.root, True))
    if cfg.data.weak_labels.source == "files" and cfg.data.weak_labels.root is not None:
        wanted.append(("data.weak_labels.root", cfg.data.weak_labels.root, True))
    out = []
    for key, value, folder in wanted:
        if value is None:
            continue
        path = Path(value)
        if not (path.is_dir() if folder else path.is_file()):
            out.append(f"{key}: no such {'folder' if folder else 'file'}: {path}")
    return out


def _print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    selection = summary.get("selection") or {}
    chosen = f"{selection.get('mode', 'last')}" + (f", round {selection['round']}" if selection.get("round") else "")
    for model_kind, sites in summary.get("test", {}).items():
        rows = [{"site": s, **m} for s, m in sites.items()]
        judged = " (judged by)" if model_kind == summary.get("judged_by") else ""
        console.print(_metrics_table(f"{summary['algorithm']} — test, {model_kind} model{judged}, {chosen}", rows))
    console.print(f"run directory: {run_dir}  (report: {run_dir / 'report.md'})")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run configuration")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. federation.rounds=5")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the run's last checkpoint")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="run directory")] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", click_type=_Choice([e.value for e in Engine], " (a deployment is submitted with flwr run, see "
                                       "docs/deployment.md)"),
        help="inprocess | flower-sim (default: the config's; a deployment is submitted with flwr run)")] = None,
    plans: Annotated[Path | None, typer.Option("--plans", help="plans.yaml of `fedseg plan` (config and --set "
                                               "override it key by key)")] = None,
) -> None:
    """Train a federation described by CONFIG."""
    _run(config, set_ or [], resume, out, engine, plans)


@app.command()
def demo(out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("runs/demo")) -> None:
    """FedAvg next to local-only on the embedded synthetic 3-site data; writes a comparison report."""
    from fedseg.cli.demo import run_demo

    run_demo(out, console=console, command=_command_line("demo", "--out", out))


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a trained run directory")],
    data: Annotated[Path | None, typer.Option("--data", help="a site folder <site>/{images,masks} or a dataset root")] = None,
    client: Annotated[str | None, typer.Option("--client", help="use this client's personalised model")] = None,
    split: Annotated[str, typer.Option(click_type=_Choice([s.value for s in Split]),
                                       help="split of the run's own data when --data is not given")]
    = Split.TEST.value,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="best | last (default: the run's eval.select)")] = None,
    per_case_csv: Annotated[Path | None, typer.Option(
        "--per-case", help="per-case metrics CSV (default RUN_DIR/per_case.csv)")] = None,
    json_: Annotated[bool, typer.Option("--json", help="print per-site and per-case metrics as JSON")] = False,
) -> None:
    """Evaluate a trained run on its own splits or on any site folder.

    Each site is scored with the model its method is judged by (its personalised model, or the
    global one); a site that never trained and --data folders with the method's unseen model;
    --client: that client's personalised model everywhere."""
    from fedseg.data.base import DataError
    from fedseg.runtime.inference import EvalError, evaluate_run

    if data is not None and not data.exists():
        _fail(f"--data {data}: no such file or folder")
    try:
        cases: list[dict[str, Any]] = []
        rows = evaluate_run(run_dir, data=data, client=client, split=split, checkpoint=checkpoint, per_case=cases)
    except EvalError as exc:  # not a finished run, a checkpoint or client it does not have
        _fail(str(exc))
        raise AssertionError from None
    except DataError as exc:
        _fail(str(exc), FAILED)
        raise AssertionError from None
    label = f"personalised ({client})" if client else "judged-by"
    selection = rows[0]["selection"] if rows else "-"
    from fedseg.runtime.evaluate_folder import eval_outputs

    if eval_outputs(rows, cases, per_case_csv or run_dir / "per_case.csv", json_):
        return
    console.print(_metrics_table(f"{run_dir.name}: {label} model ({selection}) on {data or split}", rows))


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="one run directory, or several to compare")],
    out: Annotated[Path | None, typer.Option("--out", help="comparison report path (several runs)")] = None,
) -> None:
    """(Re)write a run's report.md and plots, or compare several runs (each method scored with the
    model it is judged by, named in the column header)."""
    from fedseg.report import ReportError, comparison_table, write_comparison, write_report

    for d in run_dirs:
        if not (d / "run_info.json").is_file():
            _fail(f"{d} is not a fedseg run directory (no run_info.json)")
    try:
        if len(run_dirs) == 1:
            path = write_report(run_dirs[0])
        else:
            path = write_comparison(run_dirs, out or Path("runs") / "comparison.md")
            console.print("Test Dice per site: each method's judged-by model (header), selected checkpoint")
            # markdown as is: no rich markup ("[mu=0.1]"), no wrapping inside table rows
            console.print(comparison_table(run_dirs), markup=False, highlight=False, soft_wrap=True)
    except ReportError as exc:
        _fail(str(exc))
        raise AssertionError from None
    console.print(f"report: {path}")


app.command("predict")(predict_cmd.predict)
app.command("loso")(loso_cmd.loso)
flower_cmd.app.command("renew-certs")(certs_cmd.renew_certs)
app.command("plan")(plan_cmd.plan)
app.command("export")(export_cmd.export)
app.command("evaluate-folder")(evaluate_folder_cmd.evaluate_folder)
app.command("bench")(bench_cmd.bench)
app.add_typer(flower_cmd.app, name="flower")
app.add_typer(data_cmd.app, name="data")


if __name__ == "__main__":
    app()
