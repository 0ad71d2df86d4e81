"""Cost of on-the-fly augmentation: fedseg ``Trainer.fit`` throughput with ``train.augment`` off vs on.

Two settings: 2D whole images (the throughput benchmark's 128x128 synthetic images) and 3D random
patches (32^3 from 48^3 synthetic volumes, foreground oversampling 1/3). "on" uses the default
probabilities of :class:`fedseg.config.AugmentConfig` (``enabled: true``); "all" fires every
transform on every sample (the worst case). Rates are reported per wall second and per CPU second
of this process (the latter is the fair comparison when other processes share the cores; run
with ``OMP_NUM_THREADS=1`` then). Called by ``benchmarks/run_all.py``; alone:

    python benchmarks/bench_augment.py [--epochs 2] [--repeats 3] [--dims 2 3] [--trainer-vs-bare]
    python benchmarks/bench_augment.py --flips-vs-bare [--epochs 2] [--repeats 5]
    python benchmarks/bench_augment.py --augment-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from fedseg.config import AugmentConfig, LossConfig, ModelConfig, SplitConfig, SyntheticDataConfig, TrainConfig
from fedseg.data.synthetic import make_synthetic_federation
from fedseg.engine.seeding import seed_everything
from fedseg.engine.trainer import Trainer, resolve_device
from fedseg.losses import build_loss
from fedseg.models import build_model

_ALWAYS = {f"{k}_prob": 1.0 for k in ("rotate", "affine", "elastic", "intensity_scale", "intensity_shift", "noise",
                                      "gamma")}
SETTINGS: dict[str, dict[str, Any]] = {
    "off": {},
    "flips": {"augment": AugmentConfig(enabled=True, **{k: 0.0 for k in _ALWAYS})},
    "on": {"augment": AugmentConfig(enabled=True)},
    "all": {"augment": AugmentConfig(enabled=True, **_ALWAYS)},
}


def _case(dims: int) -> dict[str, Any]:
    if dims == 2:
        return {"size": 128, "n": 64, "batch": 8, "patch": None, "channels": [16, 32, 64, 128], "strides": [2, 2, 2]}
    return {"size": 48, "n": 16, "batch": 2, "patch": [32, 32, 32], "channels": [8, 16, 32], "strides": [2, 2]}


def augment_cost(dims: int, epochs: int, repeats: int) -> dict[str, Any]:
    """Median training samples/s of ``Trainer.fit`` per augmentation setting (first repeat = warm-up)."""
    case = _case(dims)
    device = resolve_device("auto")
    data = make_synthetic_federation(
        SyntheticDataConfig(num_sites=1, spatial_dims=dims, size=case["size"], samples_per_site=[case["n"]]),
        SplitConfig(train=0.98, val=0.01, test=0.01), 0,
    ).sites[0].train
    mcfg = ModelConfig(channels=case["channels"], strides=case["strides"])
    loss_fn = build_loss(LossConfig(), 2)
    rates: dict[str, list[float]] = {k: [] for k in SETTINGS}
    cpu_rates: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for rep in range(repeats + 1):
        for name, extra in SETTINGS.items():
            tcfg = TrainConfig(batch_size=case["batch"], patch_size=case["patch"], **extra)
            seed_everything(rep)
            model = build_model(mcfg, dims, 1, 2).to(device)
            trainer = Trainer(data, loss_fn, tcfg, epochs=epochs, device=device, seed=rep, state={})
            start, cpu_start = time.perf_counter(), time.process_time()
            steps = trainer.fit(model)["steps"]
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
            if rep > 0:
                rates[name].append(steps * case["batch"] / elapsed)
                cpu_rates[name].append(steps * case["batch"] / cpu_elapsed)
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_rates.items()}
    return {
        "device": str(device),
        "input": f"{case['size']}^{dims}" + (f" -> patches {'x'.join(map(str, case['patch']))}" if case["patch"] else ""),
        "batch": case["batch"],
        "train_samples": len(data),
        "epochs": epochs,
        "repeats": repeats,
        **{f"{k}_samples_per_s": round(v, 2) for k, v in med.items()},
        "flips_over_off": round(med["flips"] / med["off"], 3),
        "on_over_off": round(med["on"] / med["off"], 3),
        "all_over_off": round(med["all"] / med["off"], 3),
        # CPU time of this process: robust when other processes share the cores (CPU runs)
        **{f"{k}_samples_per_cpu_s": round(v, 2) for k, v in cpu.items()},
        "cpu_flips_over_off": round(cpu["flips"] / cpu["off"], 3),
        "cpu_on_over_off": round(cpu["on"] / cpu["off"], 3),
        "cpu_all_over_off": round(cpu["all"] / cpu["off"], 3),
    }


def trainer_vs_bare_cpu(epochs: int, repeats: int) -> dict[str, Any]:
    """``make bench``'s throughput comparison (augmentation off), timed by this process's CPU time.

    Same model, data, batch and optimizer as ``run_all.throughput``; pairs alternate their order.
    On cores shared with other processes wall time swings several-fold between identical runs,
    CPU time does not (with ``OMP_NUM_THREADS=1``, so no thread spins waiting for a busy core).
    """
    from run_all import bare_loop  # lazy: run_all imports this module

    device = torch.device("cpu")
    data = make_synthetic_federation(
        SyntheticDataConfig(num_sites=1, size=128, samples_per_site=[64]), SplitConfig(train=0.98, val=0.01, test=0.01), 0
    ).sites[0].train
    loss_fn = build_loss(LossConfig(), 2)
    rates: dict[str, list[float]] = {"framework": [], "bare": []}
    for rep in range(repeats + 1):
        for kind in ("bare", "framework") if rep % 2 == 0 else ("framework", "bare"):
            seed_everything(rep)
            model = build_model(ModelConfig(), 2, 1, 2)
            start = time.process_time()
            if kind == "bare":
                bare_loop(model, data.images, data.masks, loss_fn, 8, epochs, 1e-3, rep)
            else:
                Trainer(data, loss_fn, TrainConfig(batch_size=8, lr=1e-3), epochs=epochs, device=device, seed=rep,
                        state={}).fit(model)
            if rep > 0:
                rates[kind].append(len(data) * epochs / (time.process_time() - start))
    fw, bare = statistics.median(rates["framework"]), statistics.median(rates["bare"])
    pairs = [round(f / b, 3) for f, b in zip(rates["framework"], rates["bare"], strict=True)]
    return {"threads": torch.get_num_threads(), "epochs": epochs, "repeats": repeats,
            "framework_img_per_cpu_s": round(fw, 2), "bare_img_per_cpu_s": round(bare, 2),
            "ratio": round(fw / bare, 3), "pair_ratios": pairs}


def _flipping_bare_loop(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, loss_fn: Any,
                        batch_size: int, epochs: int, seed: int) -> None:
    """The by-hand reference of issue 13: Adam, shuffled batches, each batch flipped whole per axis (p 0.5)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(images.shape[0], generator=gen)
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            x, y = images[idx], masks[idx]
            for axis in (2, 3):
                if float(torch.rand(1, generator=gen)) < 0.5:
                    x, y = x.flip(axis), y.flip(axis)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()


def _flips_side(kind: str, epochs: int, seed: int) -> float:
    """CPU seconds of one side of :func:`flips_vs_bare` (``framework`` or ``bare``), data built first."""
    data = make_synthetic_federation(
        SyntheticDataConfig(num_sites=1, size=128, samples_per_site=[64]), SplitConfig(train=0.98, val=0.01, test=0.01), 0
    ).sites[0].train
    loss_fn = build_loss(LossConfig(), 2)
    seed_everything(seed)
    model = build_model(ModelConfig(channels=[16, 32, 64, 128, 256], strides=[2, 2, 2, 2]), 2, 1, 2)
    start = time.process_time()
    if kind == "bare":
        _flipping_bare_loop(model, data.images, data.masks, loss_fn, 16, epochs, seed)
    else:
        flips = TrainConfig(batch_size=16, lr=1e-3, augment=SETTINGS["flips"]["augment"])
        Trainer(data, loss_fn, flips, epochs=epochs, device=torch.device("cpu"), seed=seed, state={}).fit(model)
    return time.process_time() - start


def flips_vs_bare(epochs: int, repeats: int) -> dict[str, Any]:
    """fedseg ``Trainer.fit`` with random flips only (per sample, p 0.5 per axis) against the by-hand
    loop flipping whole batches: 62 synthetic 128x128 training images, U-Net 16-256, batch 16, CPU
    time of this process, pairs alternating their order (the first pair is a warm-up). ``--one
    framework|bare`` runs one side as a whole process (for paired whole-process timing)."""
    seconds: dict[str, list[float]] = {"framework": [], "bare": []}
    for rep in range(repeats + 1):
        for kind in ("bare", "framework") if rep % 2 == 0 else ("framework", "bare"):
            spent = _flips_side(kind, epochs, rep)
            if rep > 0:
                seconds[kind].append(spent)
    pairs = [round(f / b, 3) for f, b in zip(seconds["framework"], seconds["bare"], strict=True)]
    return {"threads": torch.get_num_threads(), "epochs": epochs, "repeats": repeats,
            "framework_cpu_s": [round(v, 2) for v in seconds["framework"]],
            "bare_cpu_s": [round(v, 2) for v in seconds["bare"]],
            "ratio_of_medians": round(statistics.median(seconds["framework"]) / statistics.median(seconds["bare"]), 3),
            "pair_ratios": pairs}


def augment_only(calls: int = 20) -> dict[str, float]:
    """CPU milliseconds per sample of ``BatchAugmenter`` alone (no training): 2D 128^2 batches of 16
    and 3D 32^3 batches of 2, flips only / default probabilities / every transform."""
    from fedseg.data.augment import BatchAugmenter

    out: dict[str, float] = {}
    for dims, size, batch in ((2, 128, 16), (3, 32, 2)):
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 1, *([size] * dims), generator=gen)
        masks = (torch.rand(batch, 1, *([size] * dims), generator=gen) > 0.5).long()
        for name in ("flips", "on", "all"):
            augment = BatchAugmenter(SETTINGS[name]["augment"], [size] * dims, seed=0)
            augment(images, masks)  # warm-up
            start = time.process_time()
            for _ in range(calls):
                augment(images, masks)
            out[f"{dims}d_{name}_ms_per_sample"] = round((time.process_time() - start) / calls / batch * 1e3, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trainer-vs-bare", action="store_true",
                        help="also time Trainer vs the bare loop (augmentation off) by CPU time")
    parser.add_argument("--flips-vs-bare", action="store_true",
                        help="only time Trainer with flips vs a by-hand loop flipping whole batches (CPU time)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], help="settings of the cost table (2 and/or 3)")
    parser.add_argument("--augment-only", action="store_true", help="only time BatchAugmenter per sample (CPU ms)")
    parser.add_argument("--one", choices=["framework", "bare"], help="run one side of --flips-vs-bare once")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps({args.one: round(_flips_side(args.one, args.epochs, 0), 3)}))
        return 0
    if args.augment_only:
        print(json.dumps(augment_only(), indent=2))
        return 0
    if args.flips_vs_bare:
        print(json.dumps(flips_vs_bare(args.epochs, args.repeats), indent=2))
        return 0
    results: dict[str, Any] = {f"{d}d": augment_cost(d, args.epochs, args.repeats) for d in args.dims}
    if args.trainer_vs_bare:
        results["trainer_vs_bare_cpu"] = trainer_vs_bare_cpu(args.epochs, max(args.repeats, 5))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
