"""``fedseg plan CONFIG``: federated auto-configuration on the in-process engine or in Flower's
simulation runtime (docs/planning.md); a deployment plans with ``fedseg flower app --plan-only``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["plan"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True)

ENGINES = ("inprocess", "flower-sim")
"""``fedseg plan --engine``: as ``fedseg run --engine`` (a deployment plans through ``flwr run``)."""


class _Engines(click.Choice):  # type: ignore[type-arg]
    """Refused values listed the way ``fedseg run --engine`` lists them (main.py imports this module)."""

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        return (f"{value!r}: allowed {', '.join(map(str, self.choices))} (a deployment plans with "
                "`fedseg flower app --plan-only`, see docs/planning.md)")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def plan(
    config: Annotated[Path, typer.Argument(help="YAML run configuration (data.source: folder)")],
    out: Annotated[Path, typer.Option("--out", help="plans file to write")] = Path("plans.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. plan.gpu_memory_gb=8")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="folder for plans.md and fingerprint.png (default: next to --out)")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="draw the fingerprint")] = True,
    engine: Annotated[str | None, typer.Option(
        "--engine", click_type=_Engines(ENGINES),
        help="inprocess | flower-sim (default: the config's engine; a deployment plans with "
             "`fedseg flower app --plan-only` and `flwr run`, docs/planning.md)")] = None,
) -> None:
    """Fingerprint every site's training cases (each site on its own), merge on the server, and
    write nnU-Net's plan as PLANS.yaml (use it with `fedseg run CONFIG --plans PLANS.yaml`)."""
    from fedseg.config import ConfigError, load_config
    from fedseg.data.base import DataError
    from fedseg.planning import PlanError, plan_inprocess, write_plans
    from fedseg.planning.report import write_plan_report
    from fedseg.runtime.common import RunError

    try:
        cfg = load_config(config, set_ or [])
        chosen = engine or cfg.engine
        if chosen == "flower":
            raise RunError("engine 'flower' is a deployment: write a planning app with `fedseg flower app APP CONFIG "
                           "--run-dir DIR --plan-only` and submit it with `flwr run` (docs/planning.md); "
                           "use --engine flower-sim to simulate")
        if chosen == "flower-sim":
            from fedseg.runtime.flower.plan_sim import plan_flower_simulation

            result = plan_flower_simulation(cfg, source=str(config))
        else:
            result = plan_inprocess(cfg)
    except (ConfigError, PlanError, DataError, RunError) as exc:
        _fail(str(exc))
        return
    path = write_plans(out, result.plan, result.sites, source=str(config))
    md = write_plan_report(result.plan, result.fingerprint, result.sites, report or out.parent, plots=plots)
    for d in result.plan.decisions:
        console.print(f"{d.key} = {d.value}", markup=False, highlight=False)
    console.print(f"plans: {path}  (report: {md})", markup=False, highlight=False)
