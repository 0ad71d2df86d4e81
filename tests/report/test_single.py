"""report.md of one run: judged-by model marked, selection and last round beside it, site and
image means, byte ratios, optimizer policy; older runs and unfinished runs still render.

Sample sd (ddof=1): for 0.9 and 0.7, mean 0.8 and sd = sqrt((0.1^2 + 0.1^2) / 1) = 0.1414.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from report_fixtures import COMMAND, SITES, metrics, write_run

from fedseg.records import ModelKind
from fedseg.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FEDBN = {"name": "fedbn"}
# the "global" model of FedBN holds never-aggregated norm layers: low scores that are not the method's
TEST = {
    ModelKind.GLOBAL: {"hospital_a": metrics(0.4, 2.0, 4), "hospital_b": metrics(0.2, 4.0, 6)},
    ModelKind.PERSONAL: {"hospital_a": metrics(0.9, 1.0, 4), "hospital_b": metrics(0.7, math.inf, 6)},
}
TEST_LAST = {
    ModelKind.GLOBAL: {"hospital_a": metrics(0.35, 2.0, 4), "hospital_b": metrics(0.25, 4.0, 6)},
    ModelKind.PERSONAL: {"hospital_a": metrics(0.8, 1.0, 4), "hospital_b": metrics(0.6, 2.0, 6)},
}
VAL = {
    ModelKind.GLOBAL: {s: [0.3, 0.4, 0.35] for s in SITES},
    ModelKind.PERSONAL: {"hospital_a": [0.5, 0.8, 0.6], "hospital_b": [0.4, 0.5, 0.7]},
}
COMM = [
    {"round": 3, "phase": "eval", "split": "val", "clients": 2, "bytes_up": 100_000, "bytes_down": 1_000_000,
     "bytes_up_raw": 100_000, "bytes_down_raw": 4_000_000},
]


@pytest.fixture
def fedbn_run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "fedbn", name="fedbn", algorithm=FEDBN, judged_by=ModelKind.PERSONAL, test=TEST,
                     test_last=TEST_LAST, val=VAL, selected_round=2, per_client={"hospital_a": 2, "hospital_b": 3},
                     comm=COMM)


def test_judged_by_model_is_marked_and_global_is_reference_only(fedbn_run: Path) -> None:
    text = write_report(fedbn_run).read_text()

    assert text.startswith("# fedbn — fedbn\n")
    assert COMMAND in text
    assert "| judged by | **personalised models (each site's own)** (recorded by the run) |" in text
    assert "| optimizer state | `reset`: a fresh optimizer every round |" in text
    assert "| on a site that never trained | the global model |" in text
    personal = text.index("### Test: personalised models (each site's own) — **judged by**")
    glob = text.index("### Test: global model\n")
    assert personal < glob
    assert "Reference only, not fedbn's result" in text[glob:]
    # personal: site, selected round, n, Dice; site mean 0.8 +- 0.141, image mean (0.9*4 + 0.7*6)/10 = 0.78
    assert "| hospital_a | 2 | 4 | 0.900 |" in text
    assert "| hospital_b | 3 | 6 | 0.700 | 0.538 | – |" in text
    assert "| **mean (sites)** | | 10 | 0.800 ± 0.141 |" in text
    assert "| **mean (images)** | | 10 | 0.780 |" in text
    # global: round 2 everywhere; image mean (0.4*4 + 0.2*6)/10 = 0.28
    assert "| hospital_b | 2 | 6 | 0.200 |" in text
    assert "| **mean (images)** | | 10 | 0.280 |" in text


def test_selected_round_and_last_round_figures_both_appear(fedbn_run: Path) -> None:
    text = write_report(fedbn_run).read_text()

    assert ("best validation round (`eval.select: best_val`): global model round 2; personalised: "
            "hospital_a 2, hospital_b 3") in text
    assert ("| site | personalised models (each site's own): selected | last round | global model: selected "
            "| last round |") in text
    assert "| hospital_a | 0.900 | 0.800 | 0.400 | 0.350 |" in text
    # last personal: sites (0.8+0.6)/2 = 0.7, images (0.8*4 + 0.6*6)/10 = 0.68; global images last 0.29
    assert "| **mean (sites)** | 0.800 | 0.700 | 0.300 | 0.300 |" in text
    assert "| **mean (images)** | 0.780 | 0.680 | 0.280 | 0.290 |" in text
    # model selection: global val Dice at round 2 = 0.4 vs 0.35 at round 3; per client
    assert "Global model: round **2** of 3, mean validation Dice **0.400** (last round: 0.350)." in text
    assert "| hospital_a | 2 | 0.800 | 0.600 |" in text
    assert "| hospital_b | 3 | 0.700 | 0.700 |" in text
    assert "Best validation round" not in text


def test_communication_per_round_and_run_with_ratios(fedbn_run: Path) -> None:
    text = write_report(fedbn_run).read_text()

    # training: 3 rounds x 2 clients x (1 MB up, raw 4; 2 MB down, raw 4)
    assert "| training, 3 round(s) | 6.000 | 12.000 | 18.000 | 4.00× | 2.00× | 2.67× |" in text
    assert "| training, per round | 2.000 | 4.000 | 6.000 | 4.00× | 2.00× | 2.67× |" in text
    # eval broadcast: 0.1 up (raw 0.1), 1 down (raw 4): total 4.1 / 1.1 = 3.73
    assert "| eval (val) | 0.100 | 1.000 | 1.100 | 1.00× | 4.00× | 3.73× |" in text
    # run: up 24.1/6.1 = 3.95, down 28/13 = 2.15, total 52.1/19.1 = 2.73
    assert "| **run total** | 6.100 | 13.000 | 19.100 | 3.95× | 2.15× | 2.73× |" in text
    assert "| **run total, per round** | 2.033 | 4.333 | 6.367 | 3.95× | 2.15× | 2.73× |" in text
    for name in ("dice_per_site.png", "loss.png", "bytes.png"):
        assert (fedbn_run / "plots" / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"](plots/{name})" in text


def test_older_run_still_renders_without_init_time_global_as_result(tmp_path: Path) -> None:
    root = write_run(tmp_path / "old", name="fedbn", algorithm=FEDBN, test=TEST, old=True, optimizer_state="persist")

    text = write_report(root).read_text()

    assert "| judged by | **personalised models (each site's own)** (not recorded (older run): inferred from fedbn) |" in text
    assert "(from config.yaml `train.optimizer_state`)" in text
    assert "the run predates `eval.select`" in text
    assert "### Test: personalised models (each site's own) — **judged by**" in text
    assert "Reference only, not fedbn's result" in text
    assert "| training, 3 round(s) | 6.000 | 12.000 | 18.000 | – | – | – |" in text
    assert "the run total covers training only" in text and "ratios are –" in text


def test_fedavg_like_personal_equal_to_global_is_said_once(tmp_path: Path) -> None:
    root = write_run(tmp_path / "avg", select="last")
    text = write_report(root).read_text()
    assert "### Test: global model — **judged by**" in text
    assert "Identical to the global model" in text
    assert "last round (`eval.select: last`), round 3 of 3" in text
    assert "The tested checkpoint is the last round's (`eval.select: last`)" in text


def test_missing_judged_model_is_not_replaced_by_another(tmp_path: Path) -> None:
    only_global = {ModelKind.GLOBAL: TEST[ModelKind.GLOBAL]}
    root = write_run(tmp_path / "r", name="fedbn", algorithm=FEDBN, judged_by=ModelKind.PERSONAL, test=only_global)
    text = write_report(root).read_text()
    assert "**Missing**: fedbn is judged by its personalised models (each site's own)" in text


def test_unfinished_run_reports_latest_validation_round(tmp_path: Path) -> None:
    val = {m: {"hospital_a": [0.2, 0.4, 0.6], "hospital_b": [0.3, 0.5, 0.8]} for m in ModelKind if m != "unseen"}
    root = write_run(tmp_path / "r", val=val, finished=False)

    text = write_report(root).read_text()

    assert "Run not finished" in text
    assert "Validation results (round 3 of 3)" in text
    assert "| **mean (sites)** | 4 | 0.700 ± 0.141 |" in text
    assert "Identical to the global model" in text
