"""Cases streamed from disk against the stacked in-memory split (issue 13; not part of `make bench`).

1. Peak RSS of one client's training, each in a fresh subprocess, as the number of synthetic 3D
   cases grows (default 20 -> 100 -> 400 cases of 96^3): ``streamed`` reads memory-mapped ``.npy``
   cases through the trainer's DataLoader path; ``in-memory`` loads the same cases into one stacked
   tensor first (today's path for data built in code). In-memory sizes whose arrays would exceed
   ``--max-inmemory-gb`` are skipped (said in the output). Training: MONAI U-Net, patches of
   ``--patch``, batch 2, ``--steps`` optimizer steps, then one whole epoch of batches read
   without training (every case read once, its foreground voxels indexed).
2. Throughput on BUS-BRA 2D (``configs/datasets/busbra_scanners.yaml``, preprocessed-case cache in
   ``$FEDSEG_CACHE_DIR``): one local epoch of the largest site's (``--site``) training split, streamed (as
   loaded) against its stacked in-memory copy, after one untimed warm-up epoch of each, paired
   and alternated, wall and CPU time (the
   process's own CPU seconds, less disturbed by other load on a shared machine), with the losses
   compared (they must be equal bit for bit); and the CPU time of drawing one epoch's batches
   without training (the data path alone). Skipped when ../shared/data is absent.
3. With ``--throughput-3d``: 3D patch throughput. ``--cases-3d`` synthetic cases of ``--side``^3
   (as in part 1), one client's local epoch of patches of ``--patch``^3 (batch 2, nnU-Net's
   ``fg_oversample`` 1/3, ``--spv`` patches per case as the BraTS presets use), same model as part 1;
   streamed (memory-mapped ``.npy`` through the trainer's DataLoader path, once per
   ``--workers-3d`` value) against the stacked in-memory split. An untimed warm-up epoch of each
   arm, then ``--pairs-3d`` rounds of one epoch per arm, rotating which goes first. Reports
   samples/s, wall and CPU seconds (this process plus its joined DataLoader workers) per epoch and
   each pair's in-memory / streamed ratio with the median; raises unless every epoch of every arm
   ends with the same loss and the same weights (bit for bit).

Usage: python benchmarks/bench_stream.py [--sizes 20 100 400] [--side 96] [--steps 10]
       [--patch 64] [--repeats 3] [--skip-rss] [--skip-busbra] [--out runs/bench]
       [--throughput-3d] [--cases-3d 24] [--spv 4] [--workers-3d 0 1] [--pairs-3d 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "datasets" / "busbra_scanners.yaml"


def write_cases(folder: Path, n: int, side: int) -> None:
    """``n`` synthetic cases (a noisy sphere) as the cache stores them: float32 image, uint8 mask."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.indices((side,) * 3).astype(np.float32)
    for i in range(n):
        if (folder / f"{i}.mask.npy").is_file():
            continue
        rng = np.random.default_rng(i)
        centre = rng.uniform(side * 0.3, side * 0.7, size=3).reshape(3, 1, 1, 1)
        mask = (((grid - centre) ** 2).sum(0) < (side * 0.15) ** 2).astype(np.uint8)
        image = (mask + 0.5 * rng.standard_normal(mask.shape)).astype(np.float32)[None]
        np.save(folder / f"{i}.image.npy", image)
        np.save(folder / f"{i}.mask.npy", mask)


def train_once(folder: Path, n: int, side: int, mode: str, steps: int, patch: int) -> dict[str, Any]:
    """One client's training in this process; returns its peak RSS (run in a subprocess)."""
    from fedseg.config import LossConfig, ModelConfig, TrainConfig
    from fedseg.data.base import SegmentationSet
    from fedseg.data.cases import ListCases
    from fedseg.engine.trainer import Trainer
    from fedseg.losses import build_loss
    from fedseg.models import build_model

    torch.manual_seed(0)
    images = [folder / f"{i}.image.npy" for i in range(n)]
    masks = [folder / f"{i}.mask.npy" for i in range(n)]
    spacing = torch.ones(n, 3, dtype=torch.float64)
    if mode == "streamed":
        data = SegmentationSet(cases=ListCases(images, masks, [(side,) * 3] * n, 1), spacing=spacing)
    else:
        data = SegmentationSet(images=torch.from_numpy(np.stack([np.load(p) for p in images])),
                               masks=torch.from_numpy(np.stack([np.load(p) for p in masks]).astype(np.int64))[:, None],
                               spacing=spacing)
    cfg = TrainConfig(batch_size=2, patch_size=[patch] * 3, num_workers=0)
    model = build_model(ModelConfig(channels=[8, 16, 32], strides=[2, 2], num_res_units=0), 3, 1, 2)
    loss_fn = build_loss(LossConfig(), 2)
    start = time.perf_counter()
    trainer = Trainer(data, loss_fn, cfg, epochs=1, device=torch.device("cpu"), seed=0, state={})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    done = 0
    for batch in trainer.batches(shuffle=True):
        optimizer.zero_grad()
        loss = loss_fn(model(batch.image), batch.mask)
        loss.backward()
        optimizer.step()
        done += 1
        if done == steps:
            break
    trained = time.perf_counter() - start
    read = 0
    for batch in trainer.batches(shuffle=True):  # then a whole epoch of batches, data only: every case read
        read += batch.image.shape[0]
    return {"mode": mode, "cases": n, "steps": done, "train_s": round(trained, 2), "epoch_patches_read": read,
            "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def rss_scaling(out: Path, sizes: list[int], side: int, steps: int, patch: int, max_gb: float) -> list[dict[str, Any]]:
    folder = out / f"stream_cases_{side}"
    write_cases(folder, max(sizes), side)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        for mode in ("streamed", "in-memory"):
            gb = n * side**3 * (4 + 8) / 2**30  # float32 images + int64 masks stacked
            if mode == "in-memory" and gb > max_gb:
                rows.append({"mode": mode, "cases": n, "skipped": f"arrays {gb:.1f} GB > --max-inmemory-gb {max_gb}"})
                continue
            cmd = [sys.executable, __file__, "--child", str(folder), str(n), str(side), mode, str(steps), str(patch)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    return rows


def busbra_throughput(repeats: int, site_name: str | None = None) -> dict[str, Any]:
    from fedseg.config import LossConfig, load_config
    from fedseg.data.base import SegmentationSet
    from fedseg.data.folder import load_folder_federation
    from fedseg.engine.trainer import Trainer
    from fedseg.losses import build_loss
    from fedseg.models import build_model

    cfg = load_config(PRESET)
    root = REPO / str(cfg.data.root)
    if not root.is_dir():
        return {"skipped": f"{root} not available"}
    start = time.perf_counter()
    data = load_folder_federation(cfg.data.model_copy(update={"root": root}), seed=0)
    load_s = time.perf_counter() - start
    site = max(data.sites, key=lambda s: len(s.train)) if site_name is None else data.site(site_name)
    streamed = site.train
    memory = SegmentationSet(images=streamed.images, masks=streamed.masks, spacing=streamed.spacing, ids=streamed.ids)
    loss_fn = build_loss(LossConfig(), 2)

    def epoch(split: SegmentationSet) -> tuple[float, float, float]:
        torch.manual_seed(0)
        model = build_model(cfg.model, 2, 1, 2)
        trainer = Trainer(split, loss_fn, cfg.train, epochs=1, device=torch.device("cpu"), seed=0, state={})
        t0, c0 = time.perf_counter(), time.process_time()
        loss = trainer.fit(model)["loss"]
        return time.perf_counter() - t0, time.process_time() - c0, loss

    def data_only(split: SegmentationSet) -> float:
        trainer = Trainer(split, loss_fn, cfg.train, epochs=1, device=torch.device("cpu"), seed=0, state={})
        c0 = time.process_time()
        for _ in trainer.batches(shuffle=True):
            pass
        return time.process_time() - c0

    times: dict[str, list[float]] = {"streamed": [], "in-memory": []}
    cpu: dict[str, list[float]] = {"streamed": [], "in-memory": []}
    losses: dict[str, float] = {}
    epoch(streamed), epoch(memory)  # warm-up (allocator, first-call costs), untimed
    for r in range(repeats):  # paired, alternating which goes first
        order = [("streamed", streamed), ("in-memory", memory)]
        for name, split in order if r % 2 == 0 else order[::-1]:
            seconds, cpu_s, losses[name] = epoch(split)
            times[name].append(seconds)
            cpu[name].append(cpu_s)
            print(name, round(seconds, 2), round(cpu_s, 2), file=sys.stderr)
    ratios = [m / s for s, m in zip(times["streamed"], times["in-memory"], strict=True)]
    cpu_ratios = [m / s for s, m in zip(cpu["streamed"], cpu["in-memory"], strict=True)]
    return {
        "site": site.name, "train_images": len(streamed), "steps": -(-len(streamed) // cfg.train.batch_size),
        "load_s": round(load_s, 2), "streamed_s": [round(t, 2) for t in times["streamed"]],
        "in_memory_s": [round(t, 2) for t in times["in-memory"]],
        "streamed_cpu_s": [round(t, 2) for t in cpu["streamed"]],
        "in_memory_cpu_s": [round(t, 2) for t in cpu["in-memory"]],
        "throughput_streamed_over_in_memory": round(statistics.median(ratios), 3),
        "throughput_cpu_time": round(statistics.median(cpu_ratios), 3),
        "data_only_cpu_s": {"streamed": round(statistics.median(data_only(streamed) for _ in range(3)), 3),
                            "in-memory": round(statistics.median(data_only(memory) for _ in range(3)), 3)},
        "losses_equal": losses["streamed"] == losses["in-memory"],
    }


def _cpu_now() -> float:
    """CPU seconds of this process plus its reaped children (DataLoader workers are joined at the
    end of each epoch, so a worker's reading counts too)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def patch3d_throughput(out: Path, n: int, side: int, patch: int, spv: int, repeats: int,
                       workers: list[int]) -> dict[str, Any]:
    """One local epoch of 3D patch training: streamed cases (one per ``workers`` entry) against the
    stacked in-memory split, paired and alternated after an untimed warm-up of each; losses and
    final weights must be equal bit for bit."""
    from fedseg.config import LossConfig, ModelConfig, TrainConfig
    from fedseg.data.base import SegmentationSet
    from fedseg.data.cases import ListCases
    from fedseg.engine.trainer import Trainer
    from fedseg.losses import build_loss
    from fedseg.models import build_model

    folder = out / f"stream_cases_{side}"
    write_cases(folder, n, side)
    images = [folder / f"{i}.image.npy" for i in range(n)]
    masks = [folder / f"{i}.mask.npy" for i in range(n)]
    spacing = torch.ones(n, 3, dtype=torch.float64)
    streamed = SegmentationSet(cases=ListCases(images, masks, [(side,) * 3] * n, 1), spacing=spacing)
    memory = SegmentationSet(images=torch.from_numpy(np.stack([np.load(p) for p in images])),
                             masks=torch.from_numpy(np.stack([np.load(p) for p in masks]).astype(np.int64))[:, None],
                             spacing=spacing)
    loss_fn = build_loss(LossConfig(), 2)
    model_cfg = ModelConfig(channels=[8, 16, 32], strides=[2, 2], num_res_units=0)
    arms = {"in-memory": (memory, 0)} | {f"streamed-w{w}": (streamed, w) for w in workers}

    def epoch(split: SegmentationSet, num_workers: int) -> tuple[float, float, float, str]:
        torch.manual_seed(0)
        model = build_model(model_cfg, 3, 1, 2)
        cfg = TrainConfig(batch_size=2, patch_size=[patch] * 3, fg_oversample=1 / 3, samples_per_volume=spv,
                          num_workers=num_workers)
        trainer = Trainer(split, loss_fn, cfg, epochs=1, device=torch.device("cpu"), seed=0, state={})
        t0, c0 = time.perf_counter(), _cpu_now()
        loss = trainer.fit(model)["loss"]
        seconds, cpu_s = time.perf_counter() - t0, _cpu_now() - c0
        digest = hashlib.sha256()
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().contiguous().numpy().tobytes())
        return seconds, cpu_s, loss, digest.hexdigest()[:16]

    wall: dict[str, list[float]] = {a: [] for a in arms}
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    results: dict[str, set[tuple[float, str]]] = {a: set() for a in arms}
    for name, (split, w) in arms.items():  # warm-up (allocator, first-call costs, page cache), untimed
        results[name].add(epoch(split, w)[2:])
    names = list(arms)
    for r in range(repeats):  # rotate which arm goes first
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, cpu_s, *res = epoch(*arms[name])
            wall[name].append(seconds)
            cpu[name].append(cpu_s)
            results[name].add((res[0], res[1]))
            print("3d", name, round(seconds, 2), round(cpu_s, 2), res[0], file=sys.stderr)
    distinct = set().union(*results.values())
    if len(distinct) != 1:
        raise RuntimeError(f"3D patch epochs differ between arms or repeats (loss, weights digest): {results}")
    samples = n * spv
    row: dict[str, Any] = {"cases": n, "side": side, "patch": patch, "batch": 2, "samples_per_volume": spv,
                           "fg_oversample": round(1 / 3, 3), "samples_per_epoch": samples,
                           "steps": -(-samples // 2), "pairs": repeats, "losses_and_weights_equal": True,
                           "loss": distinct.pop()[0]}
    for name in arms:
        row[name] = {"wall_s": [round(t, 2) for t in wall[name]], "cpu_s": [round(t, 2) for t in cpu[name]],
                     "samples_per_s": round(samples / statistics.median(wall[name]), 2)}
    for name in names[1:]:
        ratios = [m / s for s, m in zip(wall[name], wall["in-memory"], strict=True)]
        cpu_ratios = [m / s for s, m in zip(cpu[name], cpu["in-memory"], strict=True)]
        row[f"{name}_over_in_memory"] = {"wall": [round(x, 3) for x in ratios],
                                         "wall_median": round(statistics.median(ratios), 3),
                                         "cpu": [round(x, 3) for x in cpu_ratios],
                                         "cpu_median": round(statistics.median(cpu_ratios), 3)}
    return row


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        folder, n, side, mode, steps, patch = sys.argv[2:8]
        print(json.dumps(train_once(Path(folder), int(n), int(side), mode, int(steps), int(patch))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 400])
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-inmemory-gb", type=float, default=2.0)
    parser.add_argument("--skip-busbra", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--throughput-3d", action="store_true", help="run part 3 (3D patch throughput)")
    parser.add_argument("--cases-3d", type=int, default=24, help="synthetic cases of part 3")
    parser.add_argument("--spv", type=int, default=4, help="train.samples_per_volume of part 3")
    parser.add_argument("--workers-3d", type=int, nargs="+", default=[0, 1], help="streamed num_workers of part 3")
    parser.add_argument("--pairs-3d", type=int, default=5, help="paired repeats of part 3")
    parser.add_argument("--site", default=None, help="BUS-BRA site of the throughput test (default: the largest)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv)}
    if not args.skip_rss:
        result["rss"] = rss_scaling(args.out, args.sizes, args.side, args.steps, args.patch, args.max_inmemory_gb)
        streamed = [r["peak_rss_mb"] for r in result["rss"] if r["mode"] == "streamed"]
        result["streamed_rss_growth"] = round(max(streamed) / min(streamed), 3)
    if not args.skip_busbra:
        result["busbra"] = busbra_throughput(args.repeats, args.site)
    if args.throughput_3d:
        result["patch3d"] = patch3d_throughput(args.out, args.cases_3d, args.side, args.patch, args.spv,
                                               args.pairs_3d, args.workers_3d)
    (args.out / "stream.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
