"""``fedseg predict RUN_DIR INPUT... -o OUTPUT`` (one case) or ``fedseg predict RUN_DIR -i DIR -o DIR``
(every image of a folder, nnU-Net style) ``[--client NAME] [--checkpoint best|last]``: segment
files with a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["predict"]

console = Console(soft_wrap=True)  # paths and one-line messages are never broken
err_console = Console(stderr=True)


def predict(
    run_dir: Annotated[Path, typer.Argument(help="a trained run directory")],
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="a PNG/JPG/BMP or NIfTI file, or the channel files of one case (<case>_0000.nii.gz ...)"),
    ] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="mask to write (.nii.gz/.nii, or .png for 2D); with -i: the output folder")] = None,
    input_dir: Annotated[Path | None, typer.Option(
        "--input", "-i", help="folder mode: segment every PNG/JPG/BMP/NIfTI file of this folder")] = None,
    client: Annotated[str | None, typer.Option("--client", help="use this client's personalised model")] = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="best | last (default: the run's eval.select)")] = None,
    save_probabilities: Annotated[bool, typer.Option(
        "--save-probabilities", help="folder mode: also write <case>.npz with the class probabilities on the "
        "input's grid")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="folder mode: mirroring test-time augmentation")] = False,
) -> None:
    """Segment one image or volume, or with -i every image of a folder; masks keep the input's grid
    (NIfTI: its affine). One case also gets an overlay PNG (2D).

    The model: --client's personalised model, or else the method's model for a site that never
    trained (the global model for methods without local state)."""
    from fedseg.data.base import DataError
    from fedseg.runtime.inference import EvalError, predict_file
    from fedseg.runtime.predict_folder import predict_folder

    if output is None:
        err_console.print("[bold red]error:[/] -o/--output is required (a mask file, or with -i an output folder)")
        raise typer.Exit(2)
    if (input_dir is None) == (not inputs):
        err_console.print("[bold red]error:[/] give either INPUT files (one case) or -i DIR (folder mode), not both")
        raise typer.Exit(2)
    if input_dir is None and (save_probabilities or tta):
        err_console.print("[bold red]error:[/] --save-probabilities and --tta need folder mode (-i DIR)")
        raise typer.Exit(2)
    try:
        if input_dir is not None:
            done = predict_folder(run_dir, input_dir, output, client=client, checkpoint=checkpoint, tta=tta,
                                  save_probabilities=save_probabilities)
            console.print(f"{len(done)} mask(s) in {output}" + (" with probabilities (.npz)" if save_probabilities
                                                                   else ""))
            return
        result = predict_file(run_dir, inputs or [], output, client=client, checkpoint=checkpoint)
    except (EvalError, DataError) as exc:  # exit 2: the run directory or checkpoint; 1: the input (fedseg -h)
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1 if isinstance(exc, DataError) else 2) from None
    shape = "x".join(str(n) for n in result.shape)
    spacing = ", ".join(f"{s:g}" for s in result.spacing)
    counts = ", ".join(f"class {k}: {n}" for k, n in sorted(result.voxels.items()))
    console.print(f"mask: {result.mask_path}  ({shape}, spacing {spacing} mm; {counts}; {result.model} model of "
                  f"round {result.selected_round})")
    if result.overlay_path is not None:
        console.print(f"overlay: {result.overlay_path}")
