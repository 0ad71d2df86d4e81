"""``fedseg evaluate-folder GT_DIR PRED_DIR [--labels 1 2] [--tolerance MM] [--out CSV] [--json]``:
score any predictions, nnU-Net style."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["evaluate_folder"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def evaluate_folder(
    gt_dir: Annotated[Path, typer.Argument(help="reference masks (PNG/BMP or NIfTI), one file per case")],
    pred_dir: Annotated[Path, typer.Argument(help="predicted masks, the same file names")],
    labels: Annotated[list[int] | None, typer.Option("--labels", help="foreground labels to score (repeat); "
                                                     "default every label > 0 in GT_DIR")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="normalised surface Dice tolerance in mm")] = 1.0,
    out: Annotated[Path | None, typer.Option("--out", help="per-case CSV (default PRED_DIR/per_case.csv)")] = None,
    json_: Annotated[bool, typer.Option("--json", help="print the per-case rows and the mean as JSON")] = False,
) -> None:
    """Score PRED_DIR against GT_DIR: Dice, IoU, HD95 (mm), precision, recall and normalised surface
    Dice per case, written to a CSV with a last `mean` row."""
    from fedseg.data.base import DataError
    from fedseg.runtime.evaluate_folder import MEAN, json_safe, per_case_csv
    from fedseg.runtime.evaluate_folder import evaluate_folder as score
    from fedseg.runtime.trained import EvalError

    try:
        rows = score(gt_dir, pred_dir, labels=labels, tolerance=tolerance)
    except (EvalError, DataError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    path = out or pred_dir / "per_case.csv"
    per_case_csv(rows, path)
    means = {k: sum(r[k] for r in rows) / len(rows) for k in ("dice", "hd95", "nsd")}
    if json_:
        sys.stdout.write(json.dumps(json_safe({"cases": rows, MEAN: means, "per_case_csv": str(path)}), indent=2) + "\n")
        return
    console.print(f"{len(rows)} case(s): mean Dice {means['dice']:.4f}, HD95 {means['hd95']:.2f} mm, "
                  f"NSD@{tolerance:g}mm {means['nsd']:.4f}; per case: {path}")
