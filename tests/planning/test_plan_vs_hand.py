"""benchmarks/plan_vs_hand.py: the preset the plan arm starts from, and the table from a hand-made JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from bench_scripts import load_bench_script

REPO = Path(__file__).resolve().parents[2]


def _bench() -> Any:
    return load_bench_script("plan_vs_hand")


def test_plan_arm_drops_exactly_the_planned_keys() -> None:
    bench = _bench()
    raw = yaml.safe_load((REPO / "configs" / "brats_fedavg_3d.yaml").read_text())
    stripped = bench.strip_planned(raw)
    assert "model" not in stripped and "preprocess" not in stripped["data"]
    assert "patch_size" not in stripped["train"] and "batch_size" not in stripped["train"]
    assert stripped["train"]["lr"] == raw["train"]["lr"] and stripped["federation"] == raw["federation"]
    assert stripped["data"]["partition"] == raw["data"]["partition"] and stripped["eval"] == raw["eval"]
    assert "model" in raw and "preprocess" in raw["data"]  # the preset itself is left alone


def _run(arm: str, seed: int, dice: tuple[float, float], splits: dict[str, Any]) -> dict[str, Any]:
    config = {"train.patch_size": [32, 32, 32] if arm == "hand" else [96, 96, 64],
              "model.pool_strides": None if arm == "hand" else [[2, 2, 2], [2, 2, 2], [2, 2, 1]],
              "params": 1234 if arm == "hand" else 31_000_000}
    return {"dataset": "toy", "arm": arm, "seed": seed, "test_dice": {"site0": dice[0], "site1": dice[1]},
            "test_hd95": {"site0": 10.0, "site1": None}, "mean_test_dice": sum(dice) / 2, "rounds": 2,
            "seconds": 20.0, "seconds_per_round": 10.0, "cpu_seconds": 8.0, "train_seconds_per_round": 6.0,
            "splits": splits, "config": config}


def test_table_pairs_seeds_and_refuses_a_win_of_mixed_sign() -> None:
    bench = _bench()
    split = {"site0": {"train": ["a"]}}
    runs = {"toy_hand_s0": _run("hand", 0, (0.5, 0.3), split), "toy_plan_s0": _run("plan", 0, (0.7, 0.5), split),
            "toy_hand_s1": _run("hand", 1, (0.6, 0.4), split), "toy_plan_s1": _run("plan", 1, (0.5, 0.3), split)}
    table = bench.markdown_table({"runs": runs})
    assert "| hand | 0.450 ± 0.071 | 0.400 / 0.500 |" in table  # site means 0.4, 0.5
    assert "| plan | 0.500 ± 0.141 | 0.600 / 0.400 |" in table
    assert "s0 +20.0, s1 -10.0 (no consistent sign across seeds; same split in both arms)" in table
    assert "| 10.0 ± 0.0 | - |" in table  # HD95 of site0 (10 and 10), none for site1
    assert "| 6.0 ± 0.0 | 10 ± 0 | 4 ± 0 |" in table  # wall training, wall all, CPU per round
    assert "| `train.patch_size` | [32, 32, 32] | [96, 96, 64] |" in table
    assert "| `model.pool_strides` | - | 2 x [2,2,2], [2,2,1] |" in table and "| 31.00 M |" in table


def test_table_says_when_one_arm_wins_every_seed_and_when_splits_differ() -> None:
    bench = _bench()
    runs = {"toy_hand_s0": _run("hand", 0, (0.5, 0.3), {"a": 1}), "toy_plan_s0": _run("plan", 0, (0.4, 0.3), {"a": 2}),
            "toy_hand_s1": _run("hand", 1, (0.6, 0.4), {"a": 1}), "toy_plan_s1": _run("plan", 1, (0.5, 0.4), {"a": 1})}
    runs["toy_plan_s1"]["config"]["train.patch_size"] = [64, 64, 64]
    table = bench.markdown_table({"runs": runs})
    assert "(hand ahead on every seed; SPLITS DIFFER between arms)" in table
    assert "[96, 96, 64] (differs between seeds)" in table


def test_table_gives_no_verdict_on_one_seed() -> None:
    bench = _bench()
    runs = {"toy_hand_s0": _run("hand", 0, (0.5, 0.3), {}), "toy_plan_s0": _run("plan", 0, (0.9, 0.9), {})}
    assert "s0 +50.0 (a single seed: no verdict; same split in both arms)" in bench.markdown_table({"runs": runs})
