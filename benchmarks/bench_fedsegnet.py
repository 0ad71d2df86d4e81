"""FedSegNet benchmark on BUS-BRA (3 scanner sites, 128x128): communication and robustness.

Not part of `make bench` (it trains several federations; see docs/benchmarks.md for timings).

A. Communication (the default runs, seeds 0,1,2): codecs in BOTH directions. Up: top-k 2 % ->
   int8 (`fedsegnet`, `fedavg_codecs`) or random-k 50 % -> 1-bit sign (`fedsegnet_randk_sign`), with
   error feedback; down: int8 (only quantisers may travel down, docs/decisions.md 41). Against FedAvg
   float32 (`fedavg_fp32`), its uniform-weight control (`fedavg_uniform_fp32`: separates the AAM's
   effect from plain re-weighting) and the AAM alone (`aam_fp32`). Reports bytes up / down / total
   per training round and over the whole run (every `round` and `comm` line: evaluation and
   personalize exchanges included), as serialized on the wire (metrics.jsonl), their ratios against
   `fedavg_fp32` of the same seed, and test Dice of the model each method is judged by (summary.json
   `test`: the selected checkpoint where the engine selects one, else the last round's) as the mean
   over sites and over test images, mean +- sd over seeds and per seed, with the verdict on
   ">= 32x total traffic at <= 1 Dice point lost" per seed.
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
    python benchmarks/bench_fedsegnet.py [--rounds 5] [--channels 8,16,32,64] [--seeds 0,1,2]
        [--ratio 0.02] [--corrupt-site GE_Logiq7] [--corrupt-mode shuffle] [--only NAME,...]
        [--out runs/bench_fedsegnet] [--data-root DIR] [--smoke]
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
from fedseg.engine.traffic import bytes_totals
from fedseg.runtime.sim import run_inprocess

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "fedsegnet" / "full.yaml"


COMPRESSION = ["fedavg_fp32", "fedavg_uniform_fp32", "fedsegnet", "fedsegnet_randk_sign", "fedavg_codecs", "aam_fp32"]
"""Part A's runs (the default selection); every run's bytes are compared with ``fedavg_fp32``."""


def runs(ratio: float, min_numel: int, corrupt: dict[str, Any], rand_ratio: float = 0.5) -> dict[str, dict[str, Any]]:
    """Name -> overrides of full.yaml. Only quantisers travel down (docs/decisions.md 41)."""
    down = [{"name": "int8"}]
    topk_int8 = {"up": [{"name": "topk", "ratio": ratio, "min_numel": min_numel}, {"name": "int8"}], "down": down}
    randk_sign = {"up": [{"name": "randk", "ratio": rand_ratio, "min_numel": min_numel}, {"name": "sign"}],
                  "down": down}
    fp32 = {"up": [], "down": []}
    fedavg = {"name": "fedavg"}
    return {
        # A. communication: the float32 reference, its uniform-weight control, the full method, the codecs alone,
        # the AAM alone
        "fedavg_fp32": {"algorithm": fedavg, "codec": fp32},
        "fedavg_uniform_fp32": {"algorithm": {**fedavg, "weighting": "uniform"}, "codec": fp32},
        "fedsegnet": {"codec": topk_int8},  # AAM + top-k -> int8 up + int8 down
        "fedsegnet_randk_sign": {"codec": randk_sign},  # AAM + random-k -> 1-bit sign up + int8 down
        "fedavg_codecs": {"algorithm": fedavg, "codec": topk_int8},
        "aam_fp32": {"codec": fp32},
        # ablations of the codec pair: each direction alone (FedAvg)
        "fedavg_int8_down": {"algorithm": fedavg, "codec": {"up": [], "down": down}},
        "fedavg_topk_int8_up": {"algorithm": fedavg, "codec": {**topk_int8, "down": []}},
        # B. robustness to one site's corrupted labels (float32 both ways)
        f"fedavg_fp32_corrupt_{corrupt['site']}": {"algorithm": fedavg, "codec": fp32, "corrupt": corrupt},
        f"aam_fp32_corrupt_{corrupt['site']}": {"codec": fp32, "corrupt": corrupt},
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


def _test_table(records: list[dict[str, Any]], summary: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]], str]:
    """The judged-by model's per-site test metrics: summary.json's ``test`` (the selected checkpoint,
    when the engine selects) if present, else the last test eval lines; plus which model and checkpoint."""
    model = str(summary.get("judged_by", "global"))
    selection = summary.get("selection")
    mode = str(selection.get("mode")) if isinstance(selection, dict) else "last"
    test = summary.get("test", {}).get(model)
    if test:
        return model, test, mode
    lines = [r for r in records if r.get("kind") == "eval" and r.get("split") == "test" and r.get("model") == model]
    last = max((r["round"] for r in lines), default=None)
    return model, {r["site"]: r for r in lines if r["round"] == last}, "last"


def summarise(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """One run's figures: bytes per training round and over the whole run, test Dice as the mean
    over sites and over images (the judged-by model), AAM weights of the last round."""
    records = read_metrics(run_dir / "metrics.jsonl")
    rounds = [r for r in records if r["kind"] == "round"]
    model, test, mode = _test_table(records, summary)
    dice = {site: float(m["dice"]) for site, m in test.items()}
    sizes = {site: int(m["n"]) for site, m in test.items()}
    weights = [r for r in records if r["kind"] == "weights"]
    last = max((r["round"] for r in weights), default=None)
    per_round = {key: statistics.fmean(int(r.get(key, r.get(key.removesuffix("_raw"), 0))) for r in rounds)
                 for key in ("bytes_up", "bytes_down", "bytes_up_raw", "bytes_down_raw")}
    return {
        "model": model,
        "selection": mode,
        "rounds": len(rounds),
        "test_n": sizes,
        "test_dice": dice,
        "mean_test_dice": statistics.fmean(dice.values()),
        "weighted_test_dice": sum(dice[s] * sizes[s] for s in dice) / max(1, sum(sizes.values())),
        "mean_test_hd95": statistics.fmean(float(m["hd95"]) for m in test.values()),
        **{f"{k}_per_round": v for k, v in per_round.items()},  # the training exchange
        "bytes_total_per_round": per_round["bytes_up"] + per_round["bytes_down"],
        "bytes_run": bytes_totals(records),  # every round and comm line: training, evaluation, personalize
        "seconds": sum(r["seconds"] for r in rounds),
        "last_weights": {r["site"]: round(r["weight"], 4) for r in weights if r["round"] == last},
    }


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def _ratio_cell(values: list[float]) -> str:
    """Mean ratio over seeds, with the range when the seeds differ at this precision."""
    if not values:
        return "-"
    lo, hi = f"{min(values):.1f}", f"{max(values):.1f}"
    return f"{statistics.fmean(values):.1f}×" + ("" if lo == hi else f" ({lo}–{hi})")


def compare(results: dict[str, Any], reference: str = "fedavg_fp32") -> dict[str, dict[str, Any]]:
    """Per run name (seeds merged): per-seed figures and ratios against ``reference`` of the same seed."""
    out: dict[str, dict[str, Any]] = {}
    rows = results.get("runs", {})
    for key, r in rows.items():
        name, _, seed = key.rpartition("_s")
        ref = rows.get(f"{reference}_s{seed}")
        entry = out.setdefault(name, {"seeds": {}})
        cell: dict[str, Any] = {"site": r["mean_test_dice"], "image": r["weighted_test_dice"], "rounds": r["rounds"],
                                "model": r["model"], "selection": r["selection"], "B_up": r["bytes_up_per_round"],
                                "B_down": r["bytes_down_per_round"], "B_run": r["bytes_run"]["total"]}
        if ref is not None:
            cell["up"] = ref["bytes_up_per_round"] / r["bytes_up_per_round"]
            cell["down"] = ref["bytes_down_per_round"] / r["bytes_down_per_round"]
            cell["total"] = ref["bytes_total_per_round"] / r["bytes_total_per_round"]
            cell["run_total"] = ref["bytes_run"]["total"] / r["bytes_run"]["total"]
            cell["d_site"] = 100 * (r["mean_test_dice"] - ref["mean_test_dice"])
            cell["d_image"] = 100 * (r["weighted_test_dice"] - ref["weighted_test_dice"])
        entry["seeds"][int(seed)] = cell
    return out


def target_verdict(cells: dict[int, dict[str, Any]], measure: str, ratio: float = 32.0, loss: float = 1.0) -> str:
    """">= ratio x total traffic at <= loss Dice points lost" on ``measure`` (``site``/``image``): per
    seed, and on average only when every seed agrees (never on an average of opposite-signed seeds)."""
    seeds = sorted(s for s, c in cells.items() if "total" in c)
    if not seeds:
        return "-"
    ok = [cells[s]["run_total"] >= ratio and -cells[s][f"d_{measure}"] <= loss for s in seeds]
    per_seed = ", ".join(f"s{s} {'yes' if o else 'no'}" for s, o in zip(seeds, ok, strict=True))
    verdict = "met" if all(ok) else "not met" if not any(ok) else "mixed (not met)"
    return f"{verdict} ({per_seed})"


def markdown_table(results: dict[str, Any], reference: str = "fedavg_fp32") -> str:
    """Part A as markdown: per run, ratios against ``reference`` (same seed) up / down / total per
    training round and over the whole run, test Dice (site mean, image mean) as mean ± sd over seeds
    and per seed, the change against the reference in Dice points, and the 32x / 1-point verdict."""
    table = compare(results, reference)
    head = ["run", "rounds", "bytes up / down per round", "bytes, run", "up", "down", "total / round", "total, run",
            "Dice sites: mean ± sd", "per seed",
            "Δ pts", "Dice images: mean ± sd", "per seed", "Δ pts"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    verdicts = []
    for name, entry in table.items():
        cells = [entry["seeds"][s] for s in sorted(entry["seeds"])]

        def col(key: str) -> list[float]:
            return [float(c[key]) for c in cells if key in c]

        def seeds(key: str, fmt: str = "{:.3f}") -> str:
            return " / ".join(fmt.format(c[key]) for c in cells if key in c) or "-"

        lines.append("| " + " | ".join([
            f"`{name}`", "/".join(sorted({str(c["rounds"]) for c in cells})),
            f"{statistics.fmean(col('B_up')):,.0f} / {statistics.fmean(col('B_down')):,.0f}",
            f"{statistics.fmean(col('B_run')):,.0f}",
            _ratio_cell(col("up")), _ratio_cell(col("down")), _ratio_cell(col("total")), _ratio_cell(col("run_total")),
            _mean_sd(col("site")), seeds("site"), seeds("d_site", "{:+.1f}"),
            _mean_sd(col("image")), seeds("image"), seeds("d_image", "{:+.1f}"),
        ]) + " |")
        if name != reference:
            verdicts.append(f"- `{name}`: sites {target_verdict(entry['seeds'], 'site')}; "
                            f"images {target_verdict(entry['seeds'], 'image')}")
    return "\n".join(lines + ["", "Target >= 32x total traffic (whole run) at <= 1 Dice point lost:", *verdicts])


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
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ratio", type=float, default=0.02, help="top-k fraction")
    parser.add_argument("--min-numel", type=int, default=1024, help="top-k sends smaller tensors dense")
    parser.add_argument("--rand-ratio", type=float, default=0.5, help="random-k fraction (the *_randk_sign runs)")
    parser.add_argument("--corrupt-site", default="GE_Logiq7")
    parser.add_argument("--corrupt-mode", default="shuffle", choices=["shuffle", "dilate", "erode"])
    parser.add_argument("--corrupt-radius", type=int, default=8)
    parser.add_argument("--only", default="", help="comma-separated run names (default: part A's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_fedsegnet")
    parser.add_argument("--data-root", type=Path, default=None, help="BUS-BRA folder (default: full.yaml's)")
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
    base["data"]["root"] = str(args.data_root.resolve() if args.data_root else (ROOT / base["data"]["root"]).resolve())
    corrupt = {"site": args.corrupt_site, "mode": args.corrupt_mode, "radius": args.corrupt_radius}
    if args.smoke:
        base["data"] = {"source": "synthetic", "synthetic": {"num_sites": 3, "size": 32, "samples_per_site": [12, 8, 6]}}
        corrupt["site"] = "site0"
    table = runs(args.ratio, args.min_numel, corrupt, args.rand_ratio)
    selected = [n for n in args.only.split(",") if n] or COMPRESSION
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
