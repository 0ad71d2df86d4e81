"""`make bench`: framework overhead benchmarks (not tests; results go to docs/benchmarks.md).

1. Local-training throughput of fedseg's Trainer against a bare PyTorch loop on the same model,
   data, batch size and optimizer, reported as a ratio (target >= 0.95).
2. Per-round overhead of the in-process engine (serialise + aggregate + broadcast) as a share of
   round time.

Usage: python benchmarks/run_all.py [--size 128] [--epochs 3] [--repeats 3] [--out runs/bench]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fedseg.config import SplitConfig, SyntheticDataConfig, TrainConfig, config_from_dict
from fedseg.data.synthetic import make_synthetic_federation
from fedseg.engine.rundir import read_metrics
from fedseg.engine.seeding import seed_everything
from fedseg.engine.trainer import Trainer, resolve_device
from fedseg.losses import build_loss
from fedseg.models import build_model
from fedseg.config import LossConfig, ModelConfig
from fedseg.runtime.sim import run_inprocess

from bench_augment import augment_cost  # benchmarks/ is on sys.path when run as a script
from bench_data_cache import data_cache_cost, describe as describe_data_cache
import bench_flower


def bare_loop(model, images, masks, loss_fn, batch_size, epochs, lr, seed) -> int:
    """The reference: the plainest correct PyTorch training loop."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    n = images.shape[0]
    steps = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(images.device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            x, y = images[idx], masks[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            steps += 1
    if images.is_cuda:
        torch.cuda.synchronize()
    return steps


def throughput(size: int, epochs: int, repeats: int, batch: int) -> dict:
    device = resolve_device("auto")
    data = make_synthetic_federation(
        SyntheticDataConfig(num_sites=1, size=size, samples_per_site=[64]), SplitConfig(train=0.98, val=0.01, test=0.01), 0
    ).sites[0].train
    mcfg = ModelConfig()
    loss_fn = build_loss(LossConfig(), 2)
    tcfg = TrainConfig(batch_size=batch, lr=1e-3)
    n = len(data)
    results = {"framework": [], "bare": []}
    images, masks = data.images.to(device), data.masks.to(device)
    for rep in range(repeats + 1):  # first repetition is a warm-up
        for kind in ("bare", "framework") if rep % 2 == 0 else ("framework", "bare"):
            seed_everything(rep)
            model = build_model(mcfg, 2, 1, 2).to(device)
            start = time.perf_counter()
            if kind == "bare":
                bare_loop(model, images, masks, loss_fn, batch, epochs, 1e-3, rep)
            else:
                trainer = Trainer(data, loss_fn, tcfg, epochs=epochs, device=device, seed=rep, state={})
                trainer.fit(model)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if rep > 0:
                results[kind].append(n * epochs / elapsed)
    fw, bare = statistics.median(results["framework"]), statistics.median(results["bare"])
    return {
        "device": str(device),
        "image": f"{size}x{size}",
        "batch": batch,
        "train_images": n,
        "epochs": epochs,
        "repeats": repeats,
        "framework_img_per_s": round(fw, 2),
        "bare_img_per_s": round(bare, 2),
        "ratio": round(fw / bare, 3),
    }


def round_overhead(out: Path, size: int, rounds: int) -> dict:
    cfg = config_from_dict(
        {
            "name": "bench",
            "data": {"synthetic": {"num_sites": 3, "size": size, "samples_per_site": [48, 32, 20]}},
            "federation": {"rounds": rounds},
            "eval": {"every": rounds},
        }
    )
    run_dir = out / "overhead"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_inprocess(cfg, run_dir, write_report=False)
    rec = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "round"]
    overhead = sum(r["overhead_seconds"] for r in rec)
    total = sum(r["seconds"] for r in rec)
    return {
        "rounds": rounds,
        "clients": 3,
        "image": f"{size}x{size}",
        "round_seconds_mean": round(total / len(rec), 3),
        "overhead_seconds_mean": round(overhead / len(rec), 4),
        "overhead_share": round(overhead / total, 4),
        "bytes_up_per_round": rec[0]["bytes_up"],
        "bytes_down_per_round": rec[0]["bytes_down"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "throughput": throughput(args.size, args.epochs, args.repeats, args.batch),
        "round_overhead": round_overhead(args.out, 64, args.rounds),
        "augment_cost": {f"{d}d": augment_cost(d, epochs=2, repeats=3) for d in (2, 3)},
        "data_cache": data_cache_cost(args.out, repeats=3),
        "flower": bench_flower.run(args.out / "flower", rounds=args.rounds + 2),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    t, o = results["throughput"], results["round_overhead"]
    print(f"throughput ({t['device']}, {t['image']}, batch {t['batch']}): fedseg {t['framework_img_per_s']} img/s, "
          f"bare PyTorch {t['bare_img_per_s']} img/s -> ratio {t['ratio']:.3f} (target >= 0.95)")
    print(f"round overhead (3 clients, {o['image']}): {o['overhead_seconds_mean']:.4f} s of {o['round_seconds_mean']:.3f} s "
          f"per round = {100 * o['overhead_share']:.2f}%; {o['bytes_up_per_round'] / 2**20:.2f} MB up, "
          f"{o['bytes_down_per_round'] / 2**20:.2f} MB down per round")
    for dims, a in results["augment_cost"].items():
        print(f"augmentation cost ({dims}, {a['input']}, batch {a['batch']}): off {a['off_samples_per_s']}, "
              f"default on {a['on_samples_per_s']} ({a['on_over_off']:.2f}x), every transform "
              f"{a['all_samples_per_s']} ({a['all_over_off']:.2f}x) samples/s")
    print(describe_data_cache(results["data_cache"]))
    print(bench_flower.describe(results["flower"]))
    print(f"results: {args.out / 'results.json'}")
    return 0 if t["ratio"] >= 0.95 else 1


if __name__ == "__main__":
    raise SystemExit(main())
