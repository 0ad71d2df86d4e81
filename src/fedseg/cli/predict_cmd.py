"""``fedseg predict RUN_DIR INPUT... -o OUTPUT [--client NAME] [--checkpoint best|last]``: segment a file with a
trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["predict"]

console = Console(soft_wrap=True)  # paths and one-line messages are never broken
err_console = Console(stderr=True)


def predict(
    run_dir: Annotated[Path, typer.Argument(help="a trained run directory")],
    inputs: Annotated[
        list[Path],
        typer.Argument(help="a PNG/JPG/BMP or NIfTI file, or the channel files of one case (<case>_0000.nii.gz ...)"),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="mask to write: .nii.gz/.nii, or .png for 2D")],
    client: Annotated[str | None, typer.Option("--client", help="use this client's personalised model")] = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="best | last (default: the run's eval.select)")] = None,
) -> None:
    """Segment one image or volume; the mask keeps the input's grid (NIfTI: its affine), 2D adds an overlay PNG.

    The model: --client's personalised model, or else the method's model for a site that never
    trained (the global model for methods without local state)."""
    from fedseg.data.base import DataError
    from fedseg.runtime.inference import EvalError, predict_file

    try:
        result = predict_file(run_dir, inputs, output, client=client, checkpoint=checkpoint)
    except (EvalError, DataError) as exc:  # exit 2: the run directory or checkpoint; 1: the input (fedseg -h)
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1 if isinstance(exc, DataError) else 2) from None
    shape = "x".join(str(n) for n in result.shape)
    spacing = ", ".join(f"{s:g}" for s in result.spacing)
    counts = ", ".join(f"class {k}: {n}" for k, n in sorted(result.voxels.items()))
    console.print(f"mask: {result.mask_path}  ({shape}, spacing {spacing} mm; {counts}; {result.model} model of "
                  f"round {result.selected_round})")
    if result.overlay_path is not None:
        console.print(f"overlay: {result.overlay_path}")
