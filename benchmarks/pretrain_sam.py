"""Pretrain the tiny SAM centrally on other public data, as a stand-in for real SAM weights.

No SAM weights can be downloaded here, and fine-tuning LoRA on a frozen *random* encoder tests
nothing. This script trains the tiny preset's SAM (configs/pfedsam/busbra_tiny.yaml's architecture,
64x64, grey input replicated to 3 channels) with every weight trainable on polyps (Kvasir-SEG,
CVC-ClinicDB) and PH2 dermoscopy, reduced to grey: never BUS-BRA (configs/pfedsam/pretrain_tiny.yaml,
``algorithm.name: centralized``, an ordinary ``fedseg run``). It then

1. rebuilds that model from the run's ``config.yaml`` and its ``checkpoints/best.pt`` (the round
   with the best validation Dice), and saves ``model.official_state_dict(merge_lora=True)`` with
   ``torch.save`` in the official SAM key layout (outside the repository: weights are never
   committed);
2. checks the file loads **strictly** through ``model.init_checkpoint`` into the fine-tuning
   preset (LoRA rank 4 and L-MoE added by the model's own init) and that the loaded model, experts
   on, gives the pretrained model's logits (LoRA B = 0 and zero-output experts add nothing);
3. writes ``OUT/pretrain.json``: validation Dice (best round), test Dice per site, the file's
   SHA-256 and size.

A finished run (``summary.json``) is not trained again. Usage (from the repository root)::

    OMP_NUM_THREADS=1 FEDSEG_CACHE_DIR=... nice -n 5 python benchmarks/pretrain_sam.py \
        [--rounds 30] [--out runs/sambench/pretrain] \
        [--weights runs/sam_pretrained/sam_tiny64.pth]

Then fine-tune: ``fedseg run configs/pfedsam/busbra_tiny.yaml --set model.init_checkpoint=WEIGHTS``
or ``fedseg bench pfedsam`` (configs/bench/pfedsam.yaml).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from fedseg.config import load_config
from fedseg.engine.rundir import read_metrics
from fedseg.io.safe import load_checkpoint
from fedseg.models import build_model
from fedseg.models.init import load_init_checkpoint
from fedseg.records import Field, Kind, Split, SummaryKey

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "configs" / "pfedsam" / "pretrain_tiny.yaml"
FINETUNE = ROOT / "configs" / "pfedsam" / "busbra_tiny.yaml"
WEIGHTS = Path("runs/sam_pretrained/sam_tiny64.pth")


def train(out: Path, rounds: int) -> None:
    """``fedseg run`` of the pretraining config into ``out`` (resumed if killed, skipped if done)."""
    if (out / "summary.json").is_file():
        return
    cmd = [sys.executable, "-m", "fedseg.cli.main", "run", str(PRETRAIN), "--out", str(out),
           "--set", f"federation.rounds={rounds}"]
    if (out / "checkpoints").is_dir():
        cmd.append("--resume")
    subprocess.run(cmd, check=True)


def pretrained_model(out: Path) -> torch.nn.Module:
    """The pretraining run's model with the weights of its best-validation checkpoint."""
    cfg = load_config(out / "config.yaml")
    model = build_model(cfg.model, 2, cfg.data.channels, cfg.data.num_classes)
    ckpt = load_checkpoint(out / "checkpoints" / "best.pt", what="pretraining checkpoint")
    model.load_state_dict(ckpt["global_params"], strict=True)
    return model.eval()


def export(model: torch.nn.Module, weights: Path) -> str:
    """Save the official-layout state dict to ``weights``; its SHA-256."""
    state = model.official_state_dict(merge_lora=True)  # type: ignore[operator]
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, weights)
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def check_loads(model: torch.nn.Module, weights: Path) -> float:
    """Load ``weights`` strictly into the fine-tuning preset's model; max |logit difference| to ``model``."""
    cfg = load_config(FINETUNE, [f"model.init_checkpoint={weights}"])
    tuned = build_model(cfg.model, 2, cfg.data.channels, cfg.data.num_classes)
    load_init_checkpoint(tuned, weights)  # strict: raises on any missing, extra or mis-shaped key
    tuned.eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((tuned(x) - model(x)).abs().max())


def scores(out: Path) -> dict[str, Any]:
    """Best validation Dice (and its round) and test Dice per site of the pretraining run."""
    vals = [r for r in read_metrics(out / "metrics.jsonl")
            if r.get(Field.KIND) == Kind.EVAL and r.get(Field.SPLIT) == Split.VAL]
    by_round: dict[int, list[float]] = {}
    for r in vals:
        by_round.setdefault(int(r[Field.ROUND]), []).append(float(r[Field.DICE]))
    val_mean = {rnd: sum(d) / len(d) for rnd, d in by_round.items()}
    best = max(val_mean, key=lambda rnd: val_mean[rnd])
    summary = json.loads((out / "summary.json").read_text())
    test = summary[SummaryKey.TEST]["global"]
    return {"val_dice_best": val_mean[best], "val_round_best": best, "val_dice_last": val_mean[max(val_mean)],
            "val_dice_by_round": val_mean, "test_dice": {site: m["dice"] for site, m in test.items()},
            "test_n": {site: m["n"] for site, m in test.items()}, "rounds": summary["rounds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="epochs over the pooled training data")
    parser.add_argument("--out", type=Path, default=Path("runs/sambench/pretrain"))
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    train(args.out, args.rounds)
    model = pretrained_model(args.out)
    digest = export(model, args.weights)
    diff = check_loads(model, args.weights)
    if diff > 1e-4:
        raise SystemExit(f"{args.weights}: loaded into {FINETUNE.name} the logits differ by {diff:.2e} (> 1e-4)")
    report = {"weights": str(args.weights), "sha256": digest, "bytes": args.weights.stat().st_size,
              "tensors": len(torch.load(args.weights, weights_only=True)), "strict_load": "ok",
              "max_logit_diff_after_load": diff, **scores(args.out)}
    (args.out / "pretrain.json").write_text(json.dumps(report, indent=1) + "\n")
    sys.stdout.write(json.dumps({k: v for k, v in report.items() if k != "val_dice_by_round"}, indent=1) + "\n")


if __name__ == "__main__":
    main()
