"""Preprocessed-case cache on BUS-BRA by scanner at 128x128 (`configs/datasets/busbra_scanners.yaml`).

Measures, on a fresh cache folder:

1. cold load: every PNG decoded, resampled to 128x128, z-scored, written to the cache;
2. warm load: the same config again (what a second run or `fedseg eval` pays): cache reads only;
3. one pass over the in-memory training tensors, twice (epochs 1 and 2 of local training).

and counts the calls to the PNG/NIfTI readers in each, which must be 0 for 2 and 3.
Skipped (``{"skipped": ...}``) when ../shared/data is absent.

Usage: python benchmarks/bench_data_cache.py [--repeats 3] [--out runs/bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import fedseg.data.folder as folder
from fedseg.config import load_config

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "datasets" / "busbra_scanners.yaml"


class DecodeCounter:
    """Counts calls to the file readers the loader uses (fedseg.io.read_image / read_mask)."""

    def __init__(self) -> None:
        self.calls = 0
        self._originals = {name: getattr(folder, name) for name in ("read_image", "read_mask")}

    def __enter__(self) -> DecodeCounter:
        for name, original in self._originals.items():
            def spy(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.calls += 1
                return _original(*args, **kwargs)

            setattr(folder, name, spy)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._originals.items():
            setattr(folder, name, original)


def _epoch(images: torch.Tensor, masks: torch.Tensor, batch: int) -> float:
    """One shuffled pass over the training tensors, as the local trainer draws batches."""
    start = time.perf_counter()
    total = 0.0
    for idx in torch.randperm(images.shape[0]).split(batch):
        x, y = images[idx], masks[idx]
        total += float(x.sum()) + float(y.sum())
    return time.perf_counter() - start


def data_cache_cost(out: Path, repeats: int = 3, batch: int = 16) -> dict[str, Any]:
    cfg = load_config(PRESET).data
    root = REPO / str(cfg.root)
    if not root.is_dir():
        return {"skipped": f"{root} not available"}
    cache_dir = out / "data_cache"
    cold, warm, cold_decodes, warm_decodes = [], [], [], []
    data = None
    for _ in range(repeats):
        shutil.rmtree(cache_dir, ignore_errors=True)
        dcfg = cfg.model_copy(update={"root": root, "cache_dir": cache_dir})
        with DecodeCounter() as counter:
            start = time.perf_counter()
            folder.load_folder_federation(dcfg, seed=0)
            cold.append(time.perf_counter() - start)
        cold_decodes.append(counter.calls)
        with DecodeCounter() as counter:
            start = time.perf_counter()
            data = folder.load_folder_federation(dcfg, seed=0)
            warm.append(time.perf_counter() - start)
        warm_decodes.append(counter.calls)
    assert data is not None
    images = torch.cat([s.train.images for s in data.sites])
    masks = torch.cat([s.train.masks for s in data.sites])
    with DecodeCounter() as counter:
        epochs = [_epoch(images, masks, batch) for _ in range(2)]
    cases = sum(len(s.train) + len(s.val) + len(s.test) for s in data.sites)
    size = sum(p.stat().st_size for p in cache_dir.rglob("*.np[yz]"))
    return {
        "dataset": f"busbra_scanners, {cases} images, 128x128 grey",
        "repeats": repeats,
        "cold_load_s": round(statistics.median(cold), 3),
        "warm_load_s": round(statistics.median(warm), 3),
        "speedup": round(statistics.median(cold) / statistics.median(warm), 1),
        "decodes_cold": cold_decodes[-1],
        "decodes_warm": warm_decodes[-1],
        "epoch_s": [round(e, 4) for e in epochs],
        "decodes_in_epochs": counter.calls,
        "train_images": int(images.shape[0]),
        "cache_mb": round(size / 2**20, 1),
    }


def describe(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"data cache: skipped ({r['skipped']})"
    return (f"data cache ({r['dataset']}): cold load {r['cold_load_s']} s ({r['decodes_cold']} file reads), warm load "
            f"{r['warm_load_s']} s ({r['decodes_warm']} file reads) = {r['speedup']}x; epochs 1 and 2 over "
            f"{r['train_images']} training images {r['epoch_s'][0]} s / {r['epoch_s'][1]} s with "
            f"{r['decodes_in_epochs']} file reads; cache {r['cache_mb']} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python " + " ".join(sys.argv), "data_cache": data_cache_cost(args.out, args.repeats)}
    (args.out / "data_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    print(describe(result["data_cache"]))
    r = result["data_cache"]
    return 0 if "skipped" in r or (r["decodes_warm"] == 0 and r["decodes_in_epochs"] == 0) else 1


if __name__ == "__main__":
    raise SystemExit(main())
