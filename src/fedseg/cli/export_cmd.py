"""``fedseg export RUN [--client SITE] [--selection best|last] --format FMT [--out DIR]``: hand a
trained model to another pipeline, with its model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["export"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def export(
    run_dir: Annotated[Path, typer.Argument(help="a trained run directory")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="safetensors | torchscript | onnx")],
    client: Annotated[str | None, typer.Option("--client", help="export this client's personalised model")] = None,
    selection: Annotated[str | None, typer.Option(
        "--selection", help="best | last (default: the run's eval.select)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output folder (default RUN/export/<model>_<selection>)")]
    = None,
) -> None:
    """Export the run's model (the one `fedseg predict` uses on new data, or --client's personalised
    model) as safetensors, TorchScript or ONNX, with MODEL_CARD.md and model_card.json beside it."""
    from fedseg.runtime.export import export_run
    from fedseg.runtime.trained import EvalError

    try:
        done = export_run(run_dir, fmt, out=out, client=client, selection=selection)
    except EvalError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2 if str(exc).startswith("--") else 1) from None  # usage | run error
    console.print(f"model: {done.model_path}  (sha256 {done.card['sha256'][:16]}…)")
    console.print(f"model card: {done.card_md}, {done.card_json}")
