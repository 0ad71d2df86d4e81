"""Hand-set configuration vs the federated plan (issue 18): FedAvg on the BraTS and IXI presets.

Not part of `make bench`. For each dataset, arm and seed, one FedAvg run on the in-process engine:

* ``hand``: the preset as written (its hand-set spacing/shape, normalisation, patch, batch, network);
* ``plan``: the same preset with ``data.preprocess``, ``train.patch_size``, ``train.batch_size`` and
  ``model`` removed, planned by ``fedseg plan``'s in-process engine (each site fingerprints its own
  training cases of that seed's split, the server merges and plans: :func:`fedseg.planning.plan_inprocess`,
  ``plans.yaml`` + ``plans.md`` written as ``fedseg plan`` writes them) under ``plan.cpu_memory_gb``
  (``--cpu-gb``), then trained as ``fedseg run CONFIG --plans plans.yaml`` (:func:`load_planned_config`).

Both arms share everything else: seed (hence the split; checked), ``federation.rounds`` (``--rounds``)
and ``local_epochs``, optimiser and learning rate, patches per case, augmentation, evaluation
settings, checkpoint selection on validation (``eval.select: best_val``); the test split is scored
once, on the selected checkpoint (``summary.json``'s ``test``). Only what the plan decides differs.

Results go to ``OUT/results.json`` (finished runs are skipped, so an interrupted benchmark
continues) and ``OUT/table.md``: per dataset and arm, mean test Dice over sites (mean ± sd over
seeds, per seed), per-site Dice and HD95 (mm), the plan - hand difference per seed, wall time per
round, and the plan's decisions beside the hand-set ones.

Usage:
    python benchmarks/plan_vs_hand.py [--datasets brats,ixi] [--arms hand,plan] [--seeds 0,1,2]
        [--rounds 3] [--cpu-gb 2] [--plan-filters 8,16,32,64,128,256] [--out runs/plan_vs_hand]
    python benchmarks/plan_vs_hand.py --table runs/plan_vs_hand/results.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"brats": "configs/brats_fedavg_3d.yaml", "ixi": "configs/datasets/ixi_hh_brain.yaml"}
PLANNED = (("data", "preprocess"), ("train", "patch_size"), ("train", "batch_size"), ("model",))
"""The keys the plan decides: removed from the preset in the ``plan`` arm."""
SHOWN = ("data.preprocess.target_spacing", "data.preprocess.target_shape", "data.preprocess.normalize",
         "train.patch_size", "train.batch_size", "model.name", "model.filters", "model.channels",
         "model.pool_strides", "model.strides", "params")
"""Configuration keys listed side by side (``params``: the network's parameter count)."""


def strip_planned(raw: dict[str, Any]) -> dict[str, Any]:
    """The preset without the keys the plan decides (:data:`PLANNED`)."""
    out = copy.deepcopy(raw)
    for path in PLANNED:
        section = out
        for key in path[:-1]:
            section = section.get(key, {})
        section.pop(path[-1], None)
    return out


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _run_config(dataset: str, arm: str, seed: int, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The validated run config of one run, and what the plan arm's planning produced (else ``{}``)."""
    from fedseg.config import load_config
    from fedseg.planning import plan_inprocess, write_plans
    from fedseg.planning.plans_file import load_planned_config
    from fedseg.planning.report import write_plan_report

    preset = ROOT / DATASETS[dataset]
    sets = [f"seed={seed}", f"federation.rounds={args.rounds}", "eval.select=best_val",
            f"name={dataset}_{arm}_s{seed}"]
    if arm == "hand":
        return load_config(preset, sets), {}
    folder = Path(args.out) / dataset / f"planning_s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    stripped = folder / "config.yaml"
    stripped.write_text(yaml.safe_dump(strip_planned(yaml.safe_load(preset.read_text())), sort_keys=False))
    sets.append(f"plan.cpu_memory_gb={args.cpu_gb}")
    start = time.perf_counter()
    result = plan_inprocess(load_config(stripped, sets))  # what `fedseg plan CONFIG --set ...` runs
    plans = write_plans(folder / "plans.yaml", result.plan, result.sites, source=str(stripped))
    write_plan_report(result.plan, result.fingerprint, result.sites, folder, plots=False)
    info = {"plan_seconds": time.perf_counter() - start, "plans": str(plans),
            "decisions": {d.key: d.value for d in result.plan.decisions}}
    if args.plan_filters:  # a model section without a name refines the planned DynUNet (docs/planning.md)
        sets.append(f"model.filters=[{args.plan_filters}]")
    return load_planned_config(stripped, plans, sets), json.loads(json.dumps(info, default=str))


def run_one(dataset: str, arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Plan (``plan`` arm) and run one federation; its test metrics, timings and configuration."""
    from fedseg.models import build_model
    from fedseg.records import Field, Kind, SummaryKey
    from fedseg.runtime.sim import run_inprocess

    cfg, info = _run_config(dataset, arm, seed, args)
    run_dir = Path(args.out) / dataset / f"{arm}_s{seed}"
    start, cpu = time.perf_counter(), time.process_time()
    result = run_inprocess(cfg, run_dir, write_report=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    test = result.summary[SummaryKey.TEST]["global"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_s = [float(r[Field.SECONDS]) for r in lines if r.get(Field.KIND) == Kind.ROUND]
    dumped = cfg.model_dump(mode="json")
    model = build_model(cfg.model, cfg.data.spatial_dims, cfg.data.channels, cfg.data.num_classes)
    config = {key: _get(dumped, key) for key in SHOWN if key != "params"}
    config["params"] = sum(p.numel() for p in model.parameters())
    return {
        "dataset": dataset, "arm": arm, "seed": seed,
        "test_dice": {s: float(m[Field.DICE]) for s, m in test.items()},
        "test_hd95": {s: (None if m.get(Field.HD95) is None else float(m[Field.HD95])) for s, m in test.items()},
        "mean_test_dice": statistics.fmean(float(m[Field.DICE]) for m in test.values()),
        "selected_round": result.summary[SummaryKey.SELECTION]["round"],
        "rounds": cfg.federation.rounds, "seconds": seconds, "seconds_per_round": seconds / cfg.federation.rounds,
        "cpu_seconds": cpu,
        "train_seconds_per_round": statistics.fmean(train_s) if train_s else None,
        "splits": json.loads((run_dir / "splits.json").read_text()) if (run_dir / "splits.json").is_file() else None,
        "config": config, **info,
    }


def _cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _fmt(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        groups: list[str] = []
        for v in value:  # runs of equal entries as "4 x [2,2,2]"
            text = "[" + ",".join(str(x) for x in v) + "]"
            if groups and groups[-1].endswith(text) and (groups[-1] == text or " x " in groups[-1]):
                count = int(groups[-1].split(" x ")[0]) if " x " in groups[-1] else 1
                groups[-1] = f"{count + 1} x {text}"
            else:
                groups.append(text)
        return ", ".join(groups)
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, int) and value > 10000:
        return f"{value / 1e6:.2f} M"
    return "-" if value is None else str(value)


def markdown_table(results: dict[str, Any]) -> str:
    """Per dataset: one row per arm (mean test Dice over sites: mean ± sd over seeds and per seed;
    per-site Dice and HD95 as mean ± sd; wall time per round), the plan - hand difference per seed,
    and the configurations side by side (the plan's as planned for the first seed, with a note
    where another seed's plan differs)."""
    rows = results["runs"]
    out: list[str] = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows.values()):
        runs = {(r["arm"], r["seed"]): r for r in rows.values() if r["dataset"] == dataset}
        seeds = sorted({s for _, s in runs})
        arms = [a for a in ("hand", "plan") if any(k[0] == a for k in runs)]
        sites = sorted({s for r in runs.values() for s in r["test_dice"]})
        out += [f"**{dataset}**", "",
                "| arm | mean test Dice, mean ± sd | per seed (" + " / ".join(f"s{s}" for s in seeds) + ") | "
                + " | ".join(f"Dice {s}" for s in sites) + " | " + " | ".join(f"HD95 {s} (mm)" for s in sites)
                + " | wall s / round, training | wall s / run ÷ rounds | CPU s / run ÷ rounds |",
                "|---|---:|---:|" + "---:|" * (2 * len(sites) + 3)]
        for arm in arms:
            mine = [runs[(arm, s)] for s in seeds if (arm, s) in runs]
            per_seed = " / ".join(f"{r['mean_test_dice']:.3f}" for r in mine)
            dice = [_cell([r["test_dice"][s] for r in mine if s in r["test_dice"]]) for s in sites]
            hd = [_cell([v for r in mine if (v := r["test_hd95"].get(s)) is not None], 1) for s in sites]
            train = [r["train_seconds_per_round"] for r in mine if r["train_seconds_per_round"] is not None]
            out.append(f"| {arm} | {_cell([r['mean_test_dice'] for r in mine])} | {per_seed} | " + " | ".join(dice)
                       + " | " + " | ".join(hd) + f" | {_cell(train, 1)} | "
                       + f"{_cell([r['seconds_per_round'] for r in mine], 0)} | "
                       + f"{_cell([r['cpu_seconds'] / r['rounds'] for r in mine if 'cpu_seconds' in r], 0)} |")
        paired = [s for s in seeds if ("hand", s) in runs and ("plan", s) in runs]
        if paired:
            deltas = {s: 100 * (runs[("plan", s)]["mean_test_dice"] - runs[("hand", s)]["mean_test_dice"])
                      for s in paired}
            signs = {d > 0 for d in deltas.values() if d != 0}
            verdict = ("a single seed: no verdict" if len(deltas) < 2 else "plan ahead on every seed"
                       if signs == {True} else "hand ahead on every seed" if signs == {False}
                       else "no consistent sign across seeds")
            same = all(runs[("hand", s)]["splits"] == runs[("plan", s)]["splits"] for s in paired)
            out += ["", "plan - hand, mean test Dice in points per seed: "
                    + ", ".join(f"s{s} {d:+.1f}" for s, d in deltas.items()) + f" ({verdict}; "
                    + ("same split in both arms" if same else "SPLITS DIFFER between arms") + ")"]
        out += ["", "| key | hand-set | plan |", "|---|---|---|"]
        hand = next((runs[("hand", s)]["config"] for s in seeds if ("hand", s) in runs), {})
        plans = [runs[("plan", s)]["config"] for s in seeds if ("plan", s) in runs]
        for key in SHOWN:
            planned = _fmt(plans[0].get(key)) if plans else "-"
            if any(p.get(key) != plans[0].get(key) for p in plans[1:]):
                planned += " (differs between seeds)"
            out.append(f"| `{key}` | {_fmt(hand.get(key))} | {planned} |")
        out.append("")
    meta = results.get("meta", {})
    if meta:
        out.append(f"Commit `{meta.get('commit')}`, {meta.get('date')}, rounds {meta.get('args', {}).get('rounds')}, "
                   f"plan budget `plan.cpu_memory_gb: {meta.get('args', {}).get('cpu_gb')}`, plan-arm filters "
                   f"{meta.get('args', {}).get('plan_filters') or 'as planned'}.")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="brats,ixi")
    parser.add_argument("--arms", default="hand,plan")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-gb", type=float, default=2.0, help="plan.cpu_memory_gb of the plan arm")
    parser.add_argument("--plan-filters", default=None,
                        help="comma-separated model.filters for the plan arm's DynUNet (default: the plan's, nnU-Net's "
                        "32 doubling to 320); a longer list is cut to the planned depth")
    parser.add_argument("--out", default="runs/plan_vs_hand")
    parser.add_argument("--table", default=None, help="print the table of a results.json and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())), end="")
        return
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    results["meta"] = {"commit": commit.strip(), "machine": platform.platform(), "python": sys.version.split()[0],
                       "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for dataset in args.datasets.split(","):
            for arm in args.arms.split(","):
                key = f"{dataset}_{arm}_s{seed}"
                if key in results["runs"]:
                    continue
                results["runs"][key] = r = run_one(dataset, arm, seed, args)
                print(f"{key}: dice {r['mean_test_dice']:.3f}, {r['seconds_per_round']:.0f} s/round", flush=True)
                path.write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(markdown_table(results))
    print(markdown_table(results), end="")


if __name__ == "__main__":
    main()
