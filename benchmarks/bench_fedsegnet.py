"""FedSegNet benchmark on BUS-BRA (3 scanner sites, 128x128): communication and robustness.

Not part of `make bench` (it trains several federations; see docs/benchmarks.md for timings).

A. Communication: FedAvg with float32 updates vs FedSegNet (AAM + top-k -> int8 updates with
   error feedback), same model, data, rounds and seeds. Reports bytes up per round (from the
   serialized messages, as logged in metrics.jsonl) as a ratio, and the mean test Dice of the
   global model over the sites (and weighted by test images). FedAvg + top-k -> int8 isolates
   the codec's effect on Dice. `fedsegnet_randk_sign` swaps the codec for a seeded random half of
   each tensor's coordinates sent as 1-bit signs (`randk -> sign`, ~37x; docs/decisions.md 76).
B. Robustness: FedAvg vs AAM (float32 updates) with clean labels and with one site's training and
   validation labels corrupted (`data.corrupt_labels`); the test labels stay clean. Reports each
   method's Dice loss (clean - corrupted).

Every run uses configs/fedsegnet/full.yaml with the overrides of its row; the model is the
transformer U-Net for all runs (width from --channels).

C. Memory (--memory SIZE): bytes the 3D transformer U-Net (channels 16/32/64/128/256, 4 pooling
   steps, 8 heads, instance norm, 4 classes) saves for backward at SIZE^3, batch 2, counted with
   saved-tensor hooks on the meta device (no memory, no GPU needed), plus the parameter count.

Usage:
    python benchmarks/bench_fedsegnet.py --memory 128
    python benchmarks/bench_fedsegnet.py --table runs/bench_fedsegnet*/results.json
    python benchmarks/bench_fedsegnet.py [--rounds 5] [--channels 8,16,32,64] [--seeds 0]
        [--ratio 0.02] [--corrupt-site GE_Logiq7] [--corrupt-mode shuffle] [--only NAME,...]
        [--out runs/bench_fedsegnet] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from fedseg.config import config_from_dict
from fedseg.data.build import build_federated_data
from fedseg.engine.rundir import read_metrics
from fedseg.runtime.sim import run_inprocess

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "fedsegnet" / "full.yaml"


def runs(ratio: float, min_numel: int, corrupt: dict[str, Any], rand_ratio: float = 0.5) -> dict[str, dict[str, Any]]:
    """Name -> overrides of full.yaml."""
    codec = {"up": [{"name": "topk", "ratio": ratio, "min_numel": min_numel}, {"name": "int8"}], "down": []}
    sign = {"up": [{"name": "sign"}], "down": []}
    randk_sign = {"up": [{"name": "randk", "ratio": rand_ratio, "min_numel": min_numel}, {"name": "sign"}], "down": []}
    fp32 = {"up": [], "down": []}
    return {  # in order of importance: A, then B, then the codec-only control
        "fedavg_fp32": {"algorithm": {"name": "fedavg"}, "codec": fp32},
        "fedsegnet": {"codec": codec},  # the full method: AAM + codec
        "aam_fp32": {"codec": fp32},
        f"fedavg_fp32_corrupt_{corrupt['site']}": {"algorithm": {"name": "fedavg"}, "codec": fp32, "corrupt": corrupt},
        f"aam_fp32_corrupt_{corrupt['site']}": {"codec": fp32, "corrupt": corrupt},
        "fedavg_topk_int8": {"algorithm": {"name": "fedavg"}, "codec": codec},
        "fedsegnet_sign": {"codec": sign},  # 1-bit scaled sign of every coordinate (~31x)
        "fedsegnet_randk_sign": {"codec": randk_sign},  # seeded random-k (no indices) -> sign
        "fedavg_randk_sign": {"algorithm": {"name": "fedavg"}, "codec": randk_sign},
    }


def build_config(base: dict[str, Any], overrides: dict[str, Any], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg["seed"] = seed
    cfg["federation"]["rounds"] = args.rounds
    cfg["model"]["channels"] = [int(c) for c in args.channels.split(",")]
    cfg["model"]["strides"] = [2] * (len(cfg["model"]["channels"]) - 1)
    cfg["model"]["heads"] = args.heads
    for key in ("algorithm", "codec"):
        if key in overrides:
            cfg[key] = copy.deepcopy(overrides[key])
    if "corrupt" in overrides:
        cfg["data"]["corrupt_labels"] = overrides["corrupt"]
    return cfg


def summarise(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    records = read_metrics(run_dir / "metrics.jsonl")
    rounds = [r for r in records if r["kind"] == "round"]
    test = summary["test"].get("global", {})
    dice = {site: m["dice"] for site, m in test.items()}
    weights = [r for r in records if r["kind"] == "weights"]
    last = max((r["round"] for r in weights), default=None)
    sizes = {site: int(m["n"]) for site, m in test.items()}
    return {
        "test_n": sizes,
        "weighted_test_dice": sum(m["dice"] * sizes[s] for s, m in test.items()) / max(1, sum(sizes.values())),
        "bytes_up_per_round": statistics.fmean(r["bytes_up"] for r in rounds),
        "bytes_down_per_round": statistics.fmean(r["bytes_down"] for r in rounds),
        "bytes_up_per_client_round": {r["site"]: r["bytes_up"] for r in records if r["kind"] == "train" and r["round"] == 1},
        "mean_test_dice": statistics.fmean(dice.values()),
        "test_dice": dice,
        "mean_test_hd95": statistics.fmean(m["hd95"] for m in test.values()),
        "seconds": sum(r["seconds"] for r in rounds),
        "last_weights": {r["site"]: round(r["weight"], 4) for r in weights if r["round"] == last},
    }


def markdown_table(results: dict[str, Any], reference: str = "fedavg_fp32") -> str:
    """One row per run of ``results['runs']``: bytes up per round, ratio to the float32 reference
    run of the same seed, mean test Dice over sites and weighted by test images, per-site Dice."""
    rows = results.get("runs", {})
    sites = sorted({s for r in rows.values() for s in r["test_dice"]})
    head = ["run", "bytes up / round", "fewer bytes", "mean Dice (sites)", "Dice (images)", *sites]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        ref = rows.get(reference + name[name.rfind("_s"):]) if "_s" in name else None
        ratio = f"{ref['bytes_up_per_round'] / r['bytes_up_per_round']:.1f}x" if ref else "-"
        cells = [name, f"{r['bytes_up_per_round']:,.0f}", ratio, f"{r['mean_test_dice']:.3f}",
                 f"{r.get('weighted_test_dice', float('nan')):.3f}", *(f"{r['test_dice'].get(s, float('nan')):.3f}" for s in sites)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_estimate(size: int, batch: int = 2, device: str = "meta") -> dict[str, float]:
    """Activation bytes saved for backward by one forward pass (tensors counted once)."""
    from fedseg.config import TransUNetConfig
    from fedseg.models import build_model

    cfg = TransUNetConfig(name="transunet", channels=[16, 32, 64, 128, 256], strides=[2, 2, 2, 2], heads=8,
                           transformer_layers=2, norm="instance")
    model = build_model(cfg, 3, 1, 4).to(device)
    saved: dict[Any, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = id(t) if t.device.type == "meta" else (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))
        saved[key] = t.numel() * t.element_size()
        return t

    x = torch.empty(batch, 1, size, size, size, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).mean()
    params = sum(p.numel() for p in model.parameters())
    return {"size": size, "batch": batch, "params": params, "param_mib": params * 4 / 2**20,
            "saved_activations_gib": sum(saved.values()) / 2**30,
            "tokens": (size // 16) ** 3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--channels", default="8,16,32,64", help="transunet widths (smaller than full.yaml for CPU)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--ratio", type=float, default=0.02, help="top-k fraction")
    parser.add_argument("--min-numel", type=int, default=1024, help="top-k sends smaller tensors dense")
    parser.add_argument("--rand-ratio", type=float, default=0.5, help="random-k fraction (the *_randk_sign runs)")
    parser.add_argument("--corrupt-site", default="GE_Logiq7")
    parser.add_argument("--corrupt-mode", default="shuffle", choices=["shuffle", "dilate", "erode"])
    parser.add_argument("--corrupt-radius", type=int, default=8)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_fedsegnet")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data instead of BUS-BRA (checks the script)")
    parser.add_argument("--memory", type=int, default=0, help="only estimate 3D memory at this cube size")
    parser.add_argument("--table", type=Path, nargs="*", default=None,
                        help="only print a markdown table of these results.json files (merged)")
    args = parser.parse_args()
    if args.table is not None:
        merged: dict[str, Any] = {"runs": {}}
        for path in args.table:
            merged["runs"].update(json.loads(path.read_text()).get("runs", {}))
        print(markdown_table(merged))
        return 0
    if args.memory:
        print(json.dumps(memory_estimate(args.memory), indent=2))
        return 0

    base = yaml.safe_load(BASE.read_text())
    base["data"]["root"] = str((ROOT / base["data"]["root"]).resolve())
    corrupt = {"site": args.corrupt_site, "mode": args.corrupt_mode, "radius": args.corrupt_radius}
    if args.smoke:
        base["data"] = {"source": "synthetic", "synthetic": {"num_sites": 3, "size": 32, "samples_per_site": [12, 8, 6]}}
        corrupt["site"] = "site0"
    table = runs(args.ratio, args.min_numel, corrupt, args.rand_ratio)
    selected = [n for n in args.only.split(",") if n] or list(table)
    unknown = [n for n in selected if n not in table]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; allowed: {', '.join(table)}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["machine"] = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    for seed in [int(s) for s in args.seeds.split(",")]:
        first = config_from_dict(build_config(base, {}, args, seed))
        data = build_federated_data(first.data, seed)  # loaded once per seed, shared by every run
        for name in selected:
            cfg = config_from_dict(build_config(base, table[name], args, seed))
            run_dir = args.out / f"{name}_s{seed}"
            if (run_dir / "summary.json").is_file():
                summary = json.loads((run_dir / "summary.json").read_text())
            else:
                start = time.perf_counter()
                resume = (run_dir / "checkpoints" / "last.pt").is_file()  # an interrupted run continues
                summary = run_inprocess(cfg, run_dir, data=data, resume=resume, command=" ".join(sys.argv)).summary
                print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
            results.setdefault("runs", {})[f"{name}_s{seed}"] = summarise(run_dir, summary)
            results_path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results.get("runs", {}), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
