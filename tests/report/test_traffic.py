"""Bytes per exchange, run totals and compression ratios, hand-computed."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fixtures import write_run

from fedseg.report import RunRecords
from fedseg.report.traffic import run_traffic

# 3 rounds x 2 clients: up 1 MB (raw 4 MB) and down 2 MB (raw 4 MB) per client and round
EVAL_VAL = {"round": 3, "phase": "eval", "split": "val", "clients": 2, "bytes_up": 100_000, "bytes_down": 1_000_000,
            "bytes_up_raw": 100_000, "bytes_down_raw": 4_000_000}


def test_training_and_comm_lines_sum_to_the_run_total(tmp_path: Path) -> None:
    traffic = run_traffic(RunRecords.load(write_run(tmp_path / "r", comm=[EVAL_VAL])))

    assert traffic.rounds == 3
    assert (traffic.training.up, traffic.training.down) == (6e6, 12e6)
    assert (traffic.training.up_raw, traffic.training.down_raw) == (24e6, 24e6)
    assert traffic.training.ratios() == pytest.approx((4.0, 2.0, 48 / 18))
    assert list(traffic.phases) == ["eval (val)"]
    total = traffic.total
    assert (total.up, total.down, total.total) == (6.1e6, 13e6, 19.1e6)
    assert total.total_raw == 52.1e6
    assert total.ratios() == pytest.approx((24.1 / 6.1, 28 / 13, 52.1 / 19.1))
    assert traffic.per_round[3].total == 6e6 + 1.1e6 and traffic.per_round[1].total == 6e6
    assert traffic.training.scaled(1 / 3).up == pytest.approx(2e6)


def test_older_runs_have_unknown_ratios_and_no_comm(tmp_path: Path) -> None:
    traffic = run_traffic(RunRecords.load(write_run(tmp_path / "r", old=True)))
    assert not traffic.has_comm
    assert traffic.total.total == 18e6
    assert traffic.total.total_raw is None and traffic.total.ratios() == (None, None, None)


def test_one_exchange_without_raw_size_makes_the_raw_total_unknown(tmp_path: Path) -> None:
    partial = {k: v for k, v in EVAL_VAL.items() if k != "bytes_down_raw"}
    traffic = run_traffic(RunRecords.load(write_run(tmp_path / "r", comm=[partial])))
    up, down, total = traffic.total.ratios()
    assert up == pytest.approx(24.1 / 6.1) and down is None and total is None
