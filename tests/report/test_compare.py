"""Comparison across runs: each column is its judged-by model on the selected checkpoint, the
header names that model, seeds combine as mean ± sample sd with n shown; mixed old/new runs.

Sample sd (ddof=1): for 0.6 and 0.8, mean 0.7 and sd = sqrt((0.1^2 + 0.1^2) / 1) = 0.1414.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from report_fixtures import SITES, metrics, write_run
from typer.testing import CliRunner

from fedseg.cli.main import app
from fedseg.records import ModelKind, Selection
from fedseg.report import ReportError, comparison_rows, comparison_table, write_comparison, write_report

# FedBN/FedRep's "global" model holds never-aggregated layers; its scores must never be the cell
GLOBAL_INIT = {"hospital_a": metrics(0.1, 9.0, 4), "hospital_b": metrics(0.2, 9.0, 6)}


def _personal_run(root: Path, name: str, a: float, b: float, algorithm: str | None = None, **kw: object) -> Path:
    test = {ModelKind.GLOBAL: GLOBAL_INIT,
            ModelKind.PERSONAL: {"hospital_a": metrics(a, 1.0, 4), "hospital_b": metrics(b, 2.0, 6)}}
    return write_run(root, name=name, algorithm={"name": algorithm or name}, judged_by=ModelKind.PERSONAL, test=test,
                     per_client={"hospital_a": 2, "hospital_b": 3}, **kw)  # type: ignore[arg-type]


@pytest.fixture
def three_methods(tmp_path: Path) -> list[Path]:
    fedavg = write_run(tmp_path / "fedavg", name="fedavg", algorithm={"name": "fedavg"}, selected_round=2,
                       test={ModelKind.GLOBAL: {"hospital_a": metrics(0.6, 3.0, 4), "hospital_b": metrics(0.5, 3.0, 6)},
                             ModelKind.PERSONAL: {"hospital_a": metrics(0.6, 3.0, 4),
                                                  "hospital_b": metrics(0.5, 3.0, 6)}})
    fedbn = _personal_run(tmp_path / "fedbn", "fedbn", 0.9, 0.7)
    fedrep = _personal_run(tmp_path / "fedrep", "fedrep", 0.8, 0.4)
    return [fedavg, fedbn, fedrep]


def test_headers_name_the_judged_by_model(three_methods: list[Path]) -> None:
    lines = comparison_table(three_methods).splitlines()
    assert lines[0] == "| site | fedavg (global) | fedbn (personal) | fedrep (personal) |"
    assert lines[-1] == "| seeds (n) | 1 | 1 | 1 |"


def test_personal_cell_is_the_mean_of_the_personal_test_lines(three_methods: list[Path]) -> None:
    rows = {(r["method"], r["site"]): r for r in comparison_rows(three_methods)}
    for name, (a, b) in (("fedbn", (0.9, 0.7)), ("fedrep", (0.8, 0.4))):
        assert rows[(name, "hospital_a")]["mean"] == a and rows[(name, "hospital_b")]["mean"] == b
        assert rows[(name, "mean")]["mean"] == pytest.approx((a + b) / 2)
        assert rows[(name, "image_mean")]["mean"] == pytest.approx((4 * a + 6 * b) / 10)
        assert rows[(name, "mean")]["model"] == ModelKind.PERSONAL
        assert rows[(name, "mean")]["selected_rounds"] == [{"hospital_a": 2, "hospital_b": 3}]
    assert rows[("fedavg", "mean")]["selected_rounds"] == [2]
    table = comparison_table(three_methods).splitlines()
    assert table[2] == "| hospital_a | 0.600 | 0.900 | 0.800 |"
    assert table[4] == "| **mean (sites)** | 0.550 | 0.800 | 0.600 |"
    assert table[5] == "| **mean (images)** | 0.540 | 0.780 | 0.560 |"


def test_mixed_old_and_new_runs_never_use_the_init_time_global(tmp_path: Path, three_methods: list[Path]) -> None:
    old_fedbn = _personal_run(tmp_path / "old_fedbn", "fedbn", 0.85, 0.65, old=True)
    old_local = write_run(tmp_path / "old_local", name="local", algorithm={"name": "local"}, has_global=False,
                          old=True, test={ModelKind.PERSONAL: {s: metrics(0.3) for s in SITES}})
    runs = [three_methods[0], old_fedbn, old_local]

    lines = comparison_table(runs).splitlines()

    assert lines[0] == "| site | fedavg (global) | fedbn (personal) | local (personal) |"
    assert lines[2] == "| hospital_a | 0.600 | 0.850 | 0.300 |"
    rows = {(r["method"], r["site"]): r for r in comparison_rows(runs)}
    assert rows[("fedbn", "mean")]["judged_by_declared"] is False
    assert rows[("fedbn", "mean")]["selection"] is None and rows[("fedbn", "mean")]["selected_rounds"] == [3]


def test_seeds_combine_as_mean_and_sample_sd(tmp_path: Path) -> None:
    seed0 = write_run(tmp_path / "s0", seed=0, test={ModelKind.GLOBAL: {"hospital_a": metrics(0.6, 2.0, 5),
                                                                         "hospital_b": metrics(0.5, 1.0, 5)}})
    seed1 = write_run(tmp_path / "s1", seed=1, test={ModelKind.GLOBAL: {"hospital_a": metrics(0.8, 4.0, 5),
                                                                         "hospital_b": metrics(0.7, 3.0, 5)}})

    lines = comparison_table([seed0, seed1]).splitlines()

    assert lines[0] == "| site | fedprox (global) |"
    assert lines[2] == "| hospital_a | 0.700 ± 0.141 |"
    assert lines[4] == "| **mean (sites)** | 0.650 ± 0.141 |"
    assert lines[-1] == "| seeds (n) | 2 |"
    row = next(r for r in comparison_rows([seed0, seed1], metric="hd95") if r["site"] == "hospital_a")
    assert row["values"] == [2.0, 4.0] and row["seeds"] == [0, 1] and row["n_seeds"] == 2
    assert row["sd"] == pytest.approx(math.sqrt(2.0))


def test_methods_are_separated_by_hyperparameters_and_optimizer_policy(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", algorithm={"name": "fedprox", "mu": 0.01})
    b = write_run(tmp_path / "b", algorithm={"name": "fedprox", "mu": 0.1})
    c1 = write_run(tmp_path / "c1", name="centralized", algorithm={"name": "centralized"}, optimizer_state="reset")
    c2 = write_run(tmp_path / "c2", name="centralized", algorithm={"name": "centralized"}, optimizer_state="persist")

    assert comparison_table([a, b]).splitlines()[0] == "| site | fedprox [mu=0.01] (global) | fedprox [mu=0.1] (global) |"
    assert comparison_table([c1, c2]).splitlines()[0] == (
        "| site | centralized [optimizer=reset] (global) | centralized [optimizer=persist] (global) |")
    new = _personal_run(tmp_path / "new", "fedbn", 0.9, 0.7)
    old = _personal_run(tmp_path / "old", "fedbn", 0.9, 0.7, old=True)
    assert comparison_table([new, old]).splitlines()[0] == (
        "| site | fedbn [select=best_val] (personal) | fedbn [select=last (not recorded)] (personal) |")


def test_write_comparison_report(tmp_path: Path, three_methods: list[Path]) -> None:
    old = write_run(tmp_path / "old", name="fedavg_old", algorithm={"name": "fedavg"}, old=True)
    write_report(three_methods[0])

    report = write_comparison([*three_methods, old], tmp_path / "cmp")

    text = report.read_text()
    assert report == tmp_path / "cmp" / "report.md"
    assert "| site | fedavg (global) | fedbn (personal) | fedrep (personal) | fedavg_old (fedavg) (global) |" in text
    assert "## Dice of the last round's model" in text and "## HD95" in text
    # traffic per run: new runs 4x up, 2x down (raw recorded); the old run has no raw sizes
    assert "| fedavg (global) | 6.000 | 12.000 | 18.000 | 4.00× | 2.00× | 2.67× | no: training only |" in text
    assert "| fedavg_old (fedavg) (global) | 6.000 | 12.000 | 18.000 | – | – | – | no: training only |" in text
    assert "| fedbn | fedbn | – | personalised models (each site's own) |" in text
    assert "`reset`: a fresh optimizer every round (from config.yaml `train.optimizer_state`)" in text
    assert "global model (inferred)" in text
    assert "| best_val: personalised: hospital_a 2, hospital_b 3 |" in text
    assert "| last round 3 (not recorded: older run) |" in text
    assert "](../fedavg/report.md)" in text and "no report.md yet" in text
    assert (tmp_path / "cmp" / "dice_comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_last_round_table_differs_from_the_selected(tmp_path: Path) -> None:
    best = {ModelKind.GLOBAL: {s: metrics(0.7) for s in SITES}}
    last = {ModelKind.GLOBAL: {s: metrics(0.6) for s in SITES}}
    run = write_run(tmp_path / "r", test=best, test_last=last, select=Selection.BEST_VAL, selected_round=2)
    text = write_comparison([run], tmp_path / "cmp.md").read_text()
    selected, last_part = text.split("## Dice of the last round's model")
    assert "| hospital_a | 0.700 |" in selected and "| hospital_a | 0.600 |" in last_part.split("##")[0]


def test_errors_name_the_problem(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r")
    with pytest.raises(ReportError, match="unknown metric 'f1'"):
        comparison_rows([run], metric="f1")
    with pytest.raises(ReportError, match="unknown split 'train'"):
        comparison_rows([run], split="train")
    with pytest.raises(ReportError, match="no run directories"):
        comparison_rows([])


def test_cli_report_compares_mixed_runs(tmp_path: Path, three_methods: list[Path]) -> None:
    old = _personal_run(tmp_path / "old_fedbn", "fedbn_old", 0.85, 0.65, "fedbn", old=True)
    result = CliRunner().invoke(app, ["report", *map(str, three_methods), str(old), "--out", str(tmp_path / "c.md")])
    assert result.exit_code == 0, result.output
    assert "| site | fedavg (global) | fedbn (personal) | fedrep (personal) | fedbn_old (fedbn) (personal) |" in result.output
    assert (tmp_path / "c.md").is_file()


def test_no_last_round_table_when_every_run_tested_its_last_round(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / "old", old=True), write_run(tmp_path / "last", name="b", select=Selection.LAST)]
    text = write_comparison(runs, tmp_path / "cmp.md").read_text()
    assert "Every run was tested on its last round's model" in text


def test_held_out_site_uses_the_unseen_model_and_stays_out_of_the_means(tmp_path: Path) -> None:
    test = {ModelKind.GLOBAL: GLOBAL_INIT,
            ModelKind.PERSONAL: {"hospital_a": metrics(0.9, 1.0, 4)},
            ModelKind.UNSEEN: {"hospital_b": metrics(0.6, 2.0, 6)}}
    run = write_run(tmp_path / "fedbn", name="fedbn", algorithm={"name": "fedbn"}, judged_by=ModelKind.PERSONAL,
                    test=test, selected_round=2, per_client={"hospital_a": 2})

    lines = comparison_table([run]).splitlines()

    assert lines[2:6] == ["| hospital_a | 0.900 |", "| hospital_b † | 0.600 |", "| **mean (sites)** | 0.900 |",
                          "| **mean (images)** | 0.900 |"]
    assert "† never trained" in lines[-1]
    text = write_report(run).read_text()
    assert "### Test: unseen-site model" in text and "| hospital_b † | 2 | 6 | 0.200 |" in text
    assert "| **mean (sites)** | | 4 | 0.100 |" in text  # global mean over the trained site only
    assert "| hospital_b | 2 | 6 | 0.600 |" in text  # the unseen-site model's own table
    assert "| **mean (sites)** | 0.900 | 0.900 | 0.100 | 0.100 | 0.600 | 0.600 |" in text  # selected vs last


def test_validation_split_is_read_at_each_clients_selected_round(tmp_path: Path) -> None:
    val = {ModelKind.PERSONAL: {"hospital_a": [0.5, 0.8, 0.6], "hospital_b": [0.4, 0.5, 0.7]}}
    run = write_run(tmp_path / "local", name="local", algorithm={"name": "local"}, has_global=False,
                    judged_by=ModelKind.PERSONAL, val=val, per_client={"hospital_a": 2, "hospital_b": 3})
    rows = {r["site"]: r for r in comparison_rows([run], split="val")}
    assert (rows["hospital_a"]["mean"], rows["hospital_b"]["mean"]) == (0.8, 0.7)
    assert rows["mean"]["mean"] == pytest.approx(0.75)
