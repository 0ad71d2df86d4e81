"""Cost of on-the-fly augmentation: fedseg ``Trainer.fit`` throughput with ``train.augment`` off vs on.

Two settings: 2D whole images (the throughput benchmark's 128x128 synthetic images) and 3D random
patches (32^3 from 48^3 synthetic volumes, foreground oversampling 1/3). "on" uses the default
probabilities of :class:`fedseg.config.AugmentConfig` (``enabled: true``); "all" fires every
transform on every sample (the worst case). Called by ``benchmarks/run_all.py``; alone:

    python benchmarks/bench_augment.py [--epochs 2] [--repeats 3]
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
    for rep in range(repeats + 1):
        for name, extra in SETTINGS.items():
            tcfg = TrainConfig(batch_size=case["batch"], patch_size=case["patch"], **extra)
            seed_everything(rep)
            model = build_model(mcfg, dims, 1, 2).to(device)
            trainer = Trainer(data, loss_fn, tcfg, epochs=epochs, device=device, seed=rep, state={})
            start = time.perf_counter()
            steps = trainer.fit(model)["steps"]
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if rep > 0:
                rates[name].append(steps * case["batch"] / elapsed)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "device": str(device),
        "input": f"{case['size']}^{dims}" + (f" -> patches {'x'.join(map(str, case['patch']))}" if case["patch"] else ""),
        "batch": case["batch"],
        "train_samples": len(data),
        "epochs": epochs,
        "repeats": repeats,
        **{f"{k}_samples_per_s": round(v, 2) for k, v in med.items()},
        "on_over_off": round(med["on"] / med["off"], 3),
        "all_over_off": round(med["all"] / med["off"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {f"{d}d": augment_cost(d, args.epochs, args.repeats) for d in (2, 3)}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
