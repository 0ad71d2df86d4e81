"""Per-seed tables and bytes per round of the `pfedsam` suite (configs/bench/pfedsam.yaml).

``fedseg bench pfedsam`` writes the standard table (per-site Dice mean +- sd over seeds, site mean,
image-weighted mean, MB over the whole run). This script adds, from the same run directories
``OUT/busbra/<method>/s<seed>``:

1. per-site test Dice per seed, with the site mean and the image-weighted mean (the model each
   method is judged by, on its best-validation checkpoint: ``summary.json``);
2. bytes per round and client, up and down: the training messages (``round`` records of
   ``metrics.jsonl``, divided by the round's clients), and the whole run's ``summary.json``
   bytes (training + evaluation messages) divided by the rounds; set against full fine-tuning of
   the same SAM (every tensor of the official layout trainable, fp32) and against the FedAvg U-Net.

Usage: ``python benchmarks/pfedsam_table.py --table runs/sambench/bench`` (markdown on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedseg.config import load_config
from fedseg.engine.rundir import read_metrics
from fedseg.models import build_model
from fedseg.records import BytesKey, Field, Kind, SummaryKey
from fedseg.report.fmt import image_mean, mean_sd, site_mean

METHODS = ("fedsam", "pfedsam", "fedavg_unet", "pfedsam_random")


def runs(out: Path) -> dict[str, dict[int, Path]]:
    """Finished run directories by method and seed."""
    found: dict[str, dict[int, Path]] = {}
    for method in METHODS:
        for d in sorted((out / "busbra" / method).glob("s*")):
            if (d / "summary.json").is_file():
                found.setdefault(method, {})[int(d.name[1:])] = d
    return found


def test_scores(run: Path) -> dict[str, dict[str, Any]]:
    """{site: metrics} of the judged-by model."""
    summary = json.loads((run / "summary.json").read_text())
    return dict(summary[SummaryKey.TEST][summary[SummaryKey.JUDGED_BY]])


def per_round_bytes(run: Path) -> tuple[float, float, float, float]:
    """(up, down) per round and client of the training messages, and (up, down) of summary.json / rounds."""
    rounds = [r for r in read_metrics(run / "metrics.jsonl") if r.get(Field.KIND) == Kind.ROUND]
    up = sum(r[Field.BYTES_UP] / r[Field.CLIENTS] for r in rounds) / len(rounds)
    down = sum(r[Field.BYTES_DOWN] / r[Field.CLIENTS] for r in rounds) / len(rounds)
    summary = json.loads((run / "summary.json").read_text())
    n = summary[SummaryKey.ROUNDS]
    return up, down, summary[SummaryKey.BYTES][BytesKey.UP] / n, summary[SummaryKey.BYTES][BytesKey.DOWN] / n


def full_finetune_bytes(run: Path) -> tuple[int, int]:
    """(tensors, fp32 bytes) of the run's SAM in the official layout: what full fine-tuning would send."""
    cfg = load_config(run / "config.yaml", ["model.init_checkpoint=null"])
    model = build_model(cfg.model, 2, cfg.data.channels, cfg.data.num_classes)
    state = model.official_state_dict()  # type: ignore[operator]
    return len(state), 4 * sum(v.numel() for k, v in state.items() if v.is_floating_point())


def dice_table(found: dict[str, dict[int, Path]]) -> list[str]:
    sites = sorted({s for seeds in found.values() for run in seeds.values() for s in test_scores(run)})
    lines = ["| method | seed | " + " | ".join(sites) + " | site mean | image-weighted |",
             "|---|---|" + "---:|" * (len(sites) + 2)]
    for method, seeds in found.items():
        rows = {seed: test_scores(run) for seed, run in sorted(seeds.items())}
        for seed, scores in rows.items():
            cells = [f"{scores[s]['dice']:.3f}" for s in sites]
            lines.append(f"| `{method}` | {seed} | " + " | ".join(cells)
                         + f" | {site_mean(scores, 'dice'):.3f} | {image_mean(scores, 'dice'):.3f} |")
        if len(rows) > 1:
            def ms(values: list[float | None]) -> str:
                m, sd = mean_sd(values)
                return f"{m:.3f} ± {sd:.3f}" if m is not None and sd is not None else "-"
            cells = [ms([r[s]["dice"] for r in rows.values()]) for s in sites]
            lines.append(f"| `{method}` | mean ± sd | " + " | ".join(cells)
                         + f" | {ms([site_mean(r, 'dice') for r in rows.values()])}"
                         + f" | {ms([image_mean(r, 'dice') for r in rows.values()])} |")
    return lines


def bytes_table(found: dict[str, dict[int, Path]]) -> list[str]:
    lines = ["| method | train msg up / client / round | down | summary.json up / round (all clients, + eval) "
             "| down | up vs full fine-tuning | up vs FedAvg U-Net |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    figures = {m: per_round_bytes(seeds[min(seeds)]) for m, seeds in found.items()}
    sam_run = next((seeds[min(seeds)] for m, seeds in found.items() if m != "fedavg_unet"), None)
    full = full_finetune_bytes(sam_run) if sam_run else None
    unet = figures.get("fedavg_unet")
    for method, (up, down, sup, sdown) in figures.items():
        vs_full = f"{up / full[1]:.1%}" if full and method != "fedavg_unet" else "-"
        vs_unet = f"{up / unet[0]:.2f}x" if unet else "-"
        lines.append(f"| `{method}` | {up / 1e3:,.1f} kB | {down / 1e3:,.1f} kB | {sup / 1e3:,.1f} kB "
                     f"| {sdown / 1e3:,.1f} kB | {vs_full} | {vs_unet} |")
    if full:
        lines.append(f"| full fine-tuning of the same SAM ({full[0]} tensors, fp32, no framing) | "
                     f"{full[1] / 1e3:,.1f} kB | {full[1] / 1e3:,.1f} kB | | | 100% | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", type=Path, required=True, help="the suite's --out folder")
    args = parser.parse_args()
    found = runs(args.table)
    if not found:
        raise SystemExit(f"{args.table}: no finished run under busbra/<method>/s<seed>")
    out = ["Per-site test Dice per seed (judged-by model, best-validation checkpoint):", "",
           *dice_table(found), "", "Bytes per round (kB = 1000 bytes; seed "
           + ", ".join(f"{m} s{min(s)}" for m, s in found.items()) + "):", "", *bytes_table(found), ""]
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
