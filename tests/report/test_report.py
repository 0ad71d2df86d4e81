"""Reports from hand-written run directories in the exact format runtime/sim.py writes.

Every "mean ± sd" is the sample sd (ddof=1): for 0.8 and 0.6, mean 0.7 and
sd = sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedseg.config import RunConfig
from fedseg.engine.rundir import RunDir
from fedseg.report import ReportError, comparison_rows, comparison_table, write_comparison, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SITES = ("hospital_a", "hospital_b")
COMMAND = "fedseg run --config configs/fedprox.yaml --set seed=0 --out runs/fedprox"


def _metrics(dice: float, hd95: float, n: int) -> dict[str, Any]:
    return {"dice": dice, "iou": dice / (2 - dice), "hd95": hd95, "precision": 0.9, "recall": 0.75, "n": n}


def make_run(
    root: Path,
    *,
    name: str = "fedprox",
    algorithm: dict[str, Any] | None = None,
    seed: int = 0,
    has_global: bool = True,
    test: dict[str, dict[str, dict[str, Any]]] | None = None,
    val: dict[str, dict[str, list[float]]] | None = None,
    rounds: int = 3,
    finished: bool = True,
) -> Path:
    """Write run_info.json, config.yaml, command.txt, metrics.jsonl and summary.json like sim.py."""
    algorithm = algorithm or {"name": "fedprox", "mu": 0.01}
    run = RunDir(root)
    run.create()
    cfg = RunConfig(name=name, seed=seed, algorithm=algorithm, federation={"rounds": rounds})
    run.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    run.command.write_text(COMMAND + "\n")
    run.write_json(
        run.info,
        {
            "name": name,
            "algorithm": algorithm["name"],
            "algorithm_params": algorithm,
            "has_global_model": has_global,
            "pooled_data": False,
            "sites": list(SITES),
            "clients": list(SITES),
            "spatial_dims": 2,
            "num_classes": 2,
            "in_channels": 1,
            "seed": seed,
            "device": "cpu",
        },
    )
    models = ("global", "personal") if has_global else ("personal",)
    val = val or {m: {s: [0.5] * rounds for s in SITES} for m in models}
    for rnd in range(1, rounds + 1):
        records: list[dict[str, Any]] = []
        for i, site in enumerate(SITES):
            records.append(
                {
                    "round": rnd, "site": site, "kind": "train", "loss": 1.0 / rnd + i, "n": 8 + 4 * i,
                    "bytes_up": 1_000_000, "bytes_down": 2_000_000, "seconds": 1.5,
                }
            )  # fmt: skip
        records.append(
            {
                "round": rnd, "site": "__server__", "kind": "round", "clients": 2, "bytes_up": 2_000_000,
                "bytes_down": 4_000_000, "seconds": 4.0, "overhead_seconds": 0.5,
            }
        )  # fmt: skip
        for site in SITES:
            for model in models:
                dice = val[model][site][rnd - 1]
                records.append(
                    {"round": rnd, "site": site, "kind": "eval", "split": "val", "model": model, **_metrics(dice, 3.0, 2)}
                )
        run.append_metrics(records)
    if finished:
        test = test or {m: {s: _metrics(0.5, 3.0, 5) for s in SITES} for m in models}
        test_records = [
            {"round": rounds, "site": site, "kind": "eval", "split": "test", "model": model, **m}
            for model, per_site in test.items()
            for site, m in per_site.items()
        ]
        run.append_metrics(test_records)
        summary: dict[str, Any] = {"algorithm": algorithm["name"], "rounds": rounds, "test": {}}
        for r in test_records:
            summary["test"].setdefault(r["model"], {})[r["site"]] = {
                k: r[k] for k in ("dice", "iou", "hd95", "precision", "recall", "n")
            }
        for model_kind, sites in summary["test"].items():
            dice = [m["dice"] for m in sites.values()]
            summary.setdefault("mean", {})[model_kind] = {"dice": sum(dice) / len(dice)}
        run.write_json(run.summary, summary)
    return root


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    test = {
        "global": {"hospital_a": _metrics(0.8, 2.0, 4), "hospital_b": _metrics(0.6, 4.0, 6)},
        "personal": {"hospital_a": _metrics(0.9, 1.0, 4), "hospital_b": _metrics(0.7, math.inf, 6)},
    }
    # mean global val Dice per round: 0.45, 0.65, 0.625 -> best round 2
    val = {
        "global": {"hospital_a": [0.5, 0.7, 0.6], "hospital_b": [0.4, 0.6, 0.65]},
        "personal": {"hospital_a": [0.55, 0.75, 0.7], "hospital_b": [0.45, 0.65, 0.7]},
    }
    return make_run(tmp_path / "fedprox", test=test, val=val)


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_write_report_tables_plots_and_command(full_run: Path) -> None:
    report = write_report(full_run)

    assert report == full_run / "report.md"
    text = report.read_text()
    assert text.startswith("# fedprox — fedprox (mu=0.01)")
    assert COMMAND in text
    for site in SITES:
        assert site in text
    # global: Dice 0.8/0.6, HD95 2/4, n 4+6; personal: Dice 0.9/0.7, HD95 1/inf (inf left out)
    assert "| **mean** | 10 | 0.700 ± 0.141 |" in text
    assert "| 3.00 ± 1.41 |" in text
    assert "| **mean** | 10 | 0.800 ± 0.141 |" in text
    assert "| hospital_b | 6 | 0.700 | 0.538 | – |" in text
    assert "Round **2** of 3: mean global Dice **0.650**" in text
    assert "| upload (MB) | 6.000 | 2.000 |" in text
    assert "| download (MB) | 12.000 | 4.000 |" in text
    for name in ("dice_per_site.png", "loss.png", "bytes.png"):
        _assert_png(full_run / "plots" / name)
        assert f"](plots/{name})" in text
    assert sorted(p.name for p in (full_run / "plots").iterdir()) == ["bytes.png", "dice_per_site.png", "loss.png"]


def test_unfinished_run_reports_latest_validation_round(tmp_path: Path) -> None:
    val = {m: {"hospital_a": [0.2, 0.4, 0.6], "hospital_b": [0.3, 0.5, 0.8]} for m in ("global", "personal")}
    run = make_run(tmp_path / "r", val=val, finished=False)

    text = write_report(run).read_text()

    assert "Run not finished" in text
    assert "Validation results (round 3 of 3)" in text
    assert "| **mean** | 4 | 0.700 ± 0.141 |" in text
    # personal == global (FedAvg-like): said once instead of a second table
    assert "Identical to the global model" in text


def test_comparison_combines_seeds_and_uses_personal_without_global(tmp_path: Path) -> None:
    seed0 = make_run(
        tmp_path / "s0",
        seed=0,
        test={"global": {"hospital_a": _metrics(0.6, 2.0, 5), "hospital_b": _metrics(0.5, 1.0, 5)}},
    )
    seed1 = make_run(
        tmp_path / "s1",
        seed=1,
        test={"global": {"hospital_a": _metrics(0.8, 4.0, 5), "hospital_b": _metrics(0.7, 3.0, 5)}},
    )
    local = make_run(
        tmp_path / "local",
        name="local",
        algorithm={"name": "local"},
        has_global=False,
        test={"personal": {"hospital_a": _metrics(0.9, 1.0, 5), "hospital_b": _metrics(0.3, 1.0, 5)}},
    )

    table = comparison_table([seed0, seed1, local])

    lines = table.splitlines()
    assert lines[0] == "| site | fedprox | local |"
    # site a 0.6/0.8, site b 0.5/0.7; mean row: per-seed site means 0.55/0.75
    assert lines[2] == "| hospital_a | 0.700 ± 0.141 | 0.900 |"
    assert lines[3] == "| hospital_b | 0.600 ± 0.141 | 0.300 |"
    assert lines[4] == "| **mean** | 0.650 ± 0.141 | 0.600 |"

    rows = comparison_rows([seed0, seed1, local], metric="hd95")
    by_key = {(r["method"], r["site"]): r for r in rows}
    fedprox_a = by_key[("fedprox", "hospital_a")]
    assert fedprox_a["model"] == "global" and fedprox_a["seeds"] == [0, 1]
    assert fedprox_a["values"] == [2.0, 4.0]
    assert fedprox_a["mean"] == pytest.approx(3.0)
    assert fedprox_a["sd"] == pytest.approx(math.sqrt(2.0))
    assert by_key[("local", "mean")]["model"] == "personal"
    assert by_key[("local", "mean")]["sd"] is None


def test_comparison_separates_hyperparameters(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", algorithm={"name": "fedprox", "mu": 0.01})
    b = make_run(tmp_path / "b", algorithm={"name": "fedprox", "mu": 0.1})

    header = comparison_table([a, b]).splitlines()[0]

    assert header == "| site | fedprox [mu=0.01] | fedprox [mu=0.1] |"


def test_write_comparison_report_and_plot(tmp_path: Path, full_run: Path) -> None:
    other = make_run(tmp_path / "local", name="local", algorithm={"name": "local"}, has_global=False)
    write_report(full_run)

    report = write_comparison([full_run, other], tmp_path / "cmp")

    assert report == tmp_path / "cmp" / "report.md"
    text = report.read_text()
    assert "## Dice" in text and "## HD95" in text
    assert "| hospital_a | 0.800 | 0.500 |" in text
    assert "| hospital_b | 4.00 | 3.00 |" in text
    assert "](../fedprox/report.md)" in text
    assert "no report.md yet" in text
    _assert_png(tmp_path / "cmp" / "dice_comparison.png")


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a run directory|no run_info.json"):
        write_report(tmp_path)
    run = make_run(tmp_path / "r")
    with pytest.raises(ReportError, match="unknown metric 'f1'"):
        comparison_rows([run], metric="f1")
    (run / "run_info.json").write_text("{")
    with pytest.raises(ReportError, match="not valid JSON"):
        write_report(run)


def test_records_match_rundir_format(full_run: Path) -> None:
    # guard: the fake run uses the keys rundir.py documents
    records = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"train", "round", "eval"}
    assert all({"round", "site", "kind"} <= set(r) for r in records)
