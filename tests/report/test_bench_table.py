from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedseg.report.bench_table import aggregate, read_run, results_markdown, runs_csv, summary_csv


def _write_run(run_dir: Path, summary: dict[str, Any], metrics: Sequence[dict[str, Any]] = (), config: str | None = None) -> Path:
    """A finished run directory as read_run reads it: summary.json, metrics.jsonl, config.yaml."""
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in metrics))
    if config is not None:
        (run_dir / "config.yaml").write_text(config)
    return run_dir


def _run(method: str, seed: int, dice: tuple[float, float], bytes_total: int = 1_000_000) -> dict[str, Any]:
    sites = {"a": {"dice": dice[0], "n": 1}, "b": {"dice": dice[1], "n": 3}}
    return {"dataset": "d", "method": method, "seed": seed, "algorithm": method, "model": "global",
            "selected_round": 1, "rounds": 2, "sites": sites, "dice": (dice[0] + dice[1]) / 2, "iou": 0.5,
            "hd95": 2.0, "precision": 0.5, "recall": 0.5, "dice_image": (dice[0] + 3 * dice[1]) / 4,
            "bytes_up": bytes_total / 2, "bytes_down": bytes_total / 2, "bytes_total": bytes_total,
            "round_seconds": 0.5, "train_seconds": 1.0, "peak_rss_mb": 100.0, "loso_dice": None,
            "unseen_dice": None}


def test_rows_are_mean_and_sample_sd_over_seeds_per_site_and_site_mean() -> None:
    runs = [_run("fedavg", s, (0.1 * s, 0.2 * s)) for s in (1, 2, 3)] + [_run("local", 0, (0.3, 0.5))]
    rows = aggregate(runs)
    assert [(r["method"], r["seeds"]) for r in rows] == [("fedavg", 3), ("local", 1)]
    fedavg = rows[0]
    site_a = [0.1 * s for s in (1, 2, 3)]
    assert fedavg["site:a"] == (statistics.fmean(site_a), statistics.stdev(site_a))  # sample sd, ddof 1
    assert fedavg["dice"][1] == statistics.stdev([(0.1 * s + 0.2 * s) / 2 for s in (1, 2, 3)])
    assert rows[1]["dice"] == (0.4, None)  # one seed: no sd


def test_markdown_claims_sd_only_with_three_seeds_and_marks_fewer() -> None:
    rows = aggregate([_run("fedavg", s, (0.1 * s, 0.2 * s)) for s in (1, 2, 3)] + [_run("local", 0, (0.3, 0.5))])
    text = results_markdown(rows)
    fedavg = next(line for line in text.splitlines() if line.startswith("| `fedavg`"))
    local = next(line for line in text.splitlines() if line.startswith("| `local`"))
    assert "0.300 ± 0.150" in fedavg and "(n=" not in fedavg
    assert "`local` (n=1)" in local and "±" not in local and "| 0.400 |" in local
    assert "| 1.000 |" in local  # MB total
    assert "fewer than 3 seeds" in text


def test_csvs_keep_every_digit() -> None:
    runs = [_run("fedavg", 0, (1 / 3, 2 / 3))]
    per_run = list(csv.DictReader(io.StringIO(runs_csv(runs))))
    assert float(per_run[0]["dice:a"]) == 1 / 3 and float(per_run[0]["dice"]) == 0.5
    summary = list(csv.DictReader(io.StringIO(summary_csv(aggregate(runs)))))
    assert float(summary[0]["site:a_mean"]) == 1 / 3 and summary[0]["site:a_sd"] == ""
    assert float(summary[0]["dice_image_mean"]) == (1 / 3 + 2) / 4


def test_many_sites_leave_the_per_site_columns_to_the_csv() -> None:
    run = _run("fedavg", 0, (0.1, 0.2))
    run["sites"] = {f"s{i}": {"dice": 0.5, "n": 1} for i in range(9)}
    text = results_markdown(aggregate([run]))
    assert "Dice s0" not in text and "Per-site Dice and HD95 of the 9 sites: summary.csv" in text
    assert "site:s8_mean" in summary_csv(aggregate([run]))


def test_read_run_splits_the_round_into_server_overhead_and_not_training(tmp_path: Any) -> None:
    summary = {"judged_by": "global", "test": {"global": {}}}
    lines = [{"kind": "round", "round": r, "seconds": 2.0, "overhead_seconds": 0.1} for r in (1, 2)]
    lines += [{"kind": "train", "round": r, "site": s, "seconds": 0.8} for r in (1, 2) for s in ("a", "b")]
    _write_run(tmp_path, summary, lines)
    rec = read_run(tmp_path, "d", "fedavg", 0)
    assert rec["overhead_share"] == 0.05  # 0.2 / 4.0 s
    assert abs(rec["not_training_share"] - 0.2) < 1e-12  # 1 - 3.2 / 4.0 s
    lines += [{"kind": "train", "round": 1, "site": "c", "seconds": 1.0}]  # overlapping clients (Flower)
    _write_run(tmp_path, summary, lines)
    assert read_run(tmp_path, "d", "fedavg", 0)["not_training_share"] is None


def test_per_site_hd95_is_aggregated_and_tabled_beside_the_dice() -> None:
    runs = [_run("fedavg", s, (0.5, 0.5)) for s in (1, 2, 3)]
    for s, r in zip((1, 2, 3), runs):
        r["sites"]["a"]["hd95"] = float(s)
    rows = aggregate(runs)
    assert rows[0]["hd95:a"] == (2.0, 1.0) and rows[0]["hd95:b"] == (None, None)
    text = results_markdown(rows)
    assert "| method | model | HD95 a (mm) | HD95 b (mm) |" in text and "| `fedavg` | global | 2.00 ± 1.00 | – |" in text
    per_run = list(csv.DictReader(io.StringIO(runs_csv(runs))))
    assert [float(r["hd95:a"]) for r in per_run] == [1.0, 2.0, 3.0] and per_run[0]["hd95:b"] == ""


def test_unseen_site_hd95_is_the_unseen_models_mean(tmp_path: Any) -> None:
    test = {"personal": {"a": {"dice": 0.9, "hd95": 1.0}},
            "unseen": {"a": {"dice": 0.1, "hd95": 50.0}, "u": {"dice": 0.4, "hd95": 7.0}}}
    _write_run(tmp_path, {"judged_by": "personal", "test": test})
    rec = read_run(tmp_path, "d", "fedoap", 0)
    assert (rec["unseen_dice"], rec["unseen_hd95"]) == (0.4, 7.0)
    text = results_markdown(aggregate([rec]))
    assert "unseen-site HD95 (mm)" in text and "| 7.00 |" in text


def test_a_global_models_held_out_site_is_scored_as_unseen_not_in_its_site_mean(tmp_path: Any) -> None:
    test = {"global": {"a": {"dice": 0.8, "hd95": 1.0, "n": 1}, "b": {"dice": 0.6, "hd95": 3.0, "n": 3},
                       "u": {"dice": 0.1, "hd95": 9.0, "n": 5}},
            "unseen": {"u": {"dice": 0.1, "hd95": 9.0, "n": 5}}}
    summary = {"judged_by": "global", "test": test, "mean": {"global": {"dice": 0.5, "dice_image": 0.3}}}
    _write_run(tmp_path, summary, config="federation:\n  train_sites: [a, b]\n")
    rec = read_run(tmp_path, "d", "fedavg", 0)
    assert set(rec["sites"]) == {"a", "b"} and abs(rec["dice"] - 0.7) < 1e-12
    assert abs(rec["dice_image"] - (0.8 + 3 * 0.6) / 4) < 1e-12  # over the trained sites' images
    assert (rec["unseen_dice"], rec["unseen_hd95"]) == (0.1, 9.0)
