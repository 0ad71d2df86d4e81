"""RunRecords: judged-by model, selection and test tables, from current and older run directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fixtures import SITES, metrics, write_run

from fedseg.records import ModelKind, Selection
from fedseg.report import ReportError, RunRecords


def test_declared_judged_by_wins(tmp_path: Path) -> None:
    run = RunRecords.load(write_run(tmp_path / "r", judged_by=ModelKind.PERSONAL))
    assert run.judged_by == ModelKind.PERSONAL and run.judged_by_declared


@pytest.mark.parametrize(
    ("algorithm", "has_global", "expected"),
    [("fedavg", True, ModelKind.GLOBAL), ("fedbn", True, ModelKind.PERSONAL), ("fedper", True, ModelKind.PERSONAL),
     ("fedrep", True, ModelKind.PERSONAL), ("ditto", True, ModelKind.PERSONAL), ("local", False, ModelKind.PERSONAL),
     ("centralized", True, ModelKind.GLOBAL)],
)
def test_older_runs_infer_judged_by_from_the_algorithm(tmp_path: Path, algorithm: str, has_global: bool,
                                                        expected: str) -> None:
    run = RunRecords.load(write_run(tmp_path / "r", algorithm={"name": algorithm}, has_global=has_global, old=True))
    assert run.judged_by == expected and not run.judged_by_declared


def test_unknown_algorithm_of_an_older_run_falls_back_to_has_global_model(tmp_path: Path) -> None:
    g = RunRecords.load(write_run(tmp_path / "g", algorithm={"name": "plugin"}, old=True))
    p = RunRecords.load(write_run(tmp_path / "p", algorithm={"name": "plugin"}, has_global=False, old=True))
    assert (g.judged_by, p.judged_by) == (ModelKind.GLOBAL, ModelKind.PERSONAL)


def test_selection_and_test_tables_from_summary(tmp_path: Path) -> None:
    best = {ModelKind.GLOBAL: {s: metrics(0.7) for s in SITES}}
    last = {ModelKind.GLOBAL: {s: metrics(0.6) for s in SITES}}
    run = RunRecords.load(write_run(tmp_path / "r", test=best, test_last=last, selected_round=2))

    sel = run.selection
    assert (sel.mode, sel.round, sel.last_round, sel.per_client) == (Selection.BEST_VAL, 2, 3, {})
    assert sel.round_for(ModelKind.GLOBAL, "hospital_a") == 2
    assert run.test_table()[ModelKind.GLOBAL]["hospital_a"]["dice"] == 0.7
    last_table = run.test_last_table()
    assert last_table is not None and last_table[ModelKind.GLOBAL]["hospital_b"]["dice"] == 0.6


def test_selection_from_test_lines_without_summary(tmp_path: Path) -> None:
    best = {ModelKind.PERSONAL: {s: metrics(0.9) for s in SITES}}
    last = {ModelKind.PERSONAL: {s: metrics(0.8) for s in SITES}}
    root = write_run(tmp_path / "r", algorithm={"name": "local"}, has_global=False, judged_by=ModelKind.PERSONAL,
                     test=best, test_last=last, per_client={"hospital_a": 1, "hospital_b": 3}, write_summary=False)
    run = RunRecords.load(root)

    sel = run.selection
    assert sel.mode == Selection.BEST_VAL and sel.per_client == {"hospital_a": 1, "hospital_b": 3}
    assert run.test_table()[ModelKind.PERSONAL]["hospital_a"]["dice"] == 0.9
    last_table = run.test_last_table()
    assert last_table is not None and last_table[ModelKind.PERSONAL]["hospital_a"]["dice"] == 0.8


def test_select_last_and_older_runs_have_no_separate_last_table(tmp_path: Path) -> None:
    last = RunRecords.load(write_run(tmp_path / "last", select=Selection.LAST))
    old = RunRecords.load(write_run(tmp_path / "old", old=True))
    assert last.selection.is_last and last.test_last_table() is None
    assert not old.selection.recorded and old.selection.is_last and old.test_last_table() is None
    assert old.selection.round_for(ModelKind.GLOBAL, "hospital_a") == 3


def test_validation_table_at_the_selected_rounds(tmp_path: Path) -> None:
    val = {ModelKind.PERSONAL: {"hospital_a": [0.5, 0.8, 0.6], "hospital_b": [0.4, 0.5, 0.7]}}
    run = RunRecords.load(write_run(tmp_path / "r", algorithm={"name": "local"}, has_global=False,
                                    judged_by=ModelKind.PERSONAL, val=val,
                                    per_client={"hospital_a": 2, "hospital_b": 3}))
    selected, latest = run.val_table()
    assert latest == 3
    assert [selected[ModelKind.PERSONAL][s]["dice"] for s in SITES] == [0.8, 0.7]
    at_latest, _ = run.val_table(at_selection=False)
    assert [at_latest[ModelKind.PERSONAL][s]["dice"] for s in SITES] == [0.6, 0.7]


def test_optimizer_policy_from_run_info_then_config(tmp_path: Path) -> None:
    new = RunRecords.load(write_run(tmp_path / "new", optimizer_state="persist"))
    old = RunRecords.load(write_run(tmp_path / "old", optimizer_state="reset", old=True))
    auto = RunRecords.load(write_run(tmp_path / "auto", algorithm={"name": "centralized"}, optimizer_state="auto",
                                     old=True))
    assert (new.optimizer_state, new.optimizer_state_declared) == ("persist", True)
    assert (old.optimizer_state, old.optimizer_state_declared) == ("reset", False)
    assert auto.optimizer_state == "persist"  # auto resolved through the algorithm's declaration


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a run directory|no run_info.json"):
        RunRecords.load(tmp_path)
    with pytest.raises(ReportError, match="not a directory"):
        RunRecords.load(tmp_path / "nowhere")
    root = write_run(tmp_path / "r")
    (root / "summary.json").write_text("[]")
    with pytest.raises(ReportError, match="expected a JSON object"):
        RunRecords.load(root)
