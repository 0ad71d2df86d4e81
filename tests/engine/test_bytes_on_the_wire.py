from __future__ import annotations

from fedseg.engine.traffic import bytes_totals, comm_record
from fedseg.records import SERVER, Field, Kind, Phase


def test_comm_record_counts_one_broadcast_per_client_and_every_reply() -> None:
    line = comm_record(4, Phase.EVAL, down=100, down_raw=400, replies={"a": b"[1]", "b": b"[]"}, split="val")
    assert line == {"round": 4, "site": SERVER, "kind": "comm", "phase": "eval", "clients": 2, "bytes_up": 5,
                    "bytes_down": 200, "bytes_up_raw": 5, "bytes_down_raw": 800, "split": "val"}
    assert Field.SPLIT not in comm_record(4, Phase.PERSONALIZE, down=1, down_raw=1, replies={})


def test_bytes_totals_sum_round_and_comm_lines_only() -> None:
    records = [
        {"kind": Kind.ROUND, "bytes_up": 10, "bytes_down": 20, "bytes_up_raw": 40, "bytes_down_raw": 80},
        {"kind": Kind.TRAIN, "bytes_up": 10, "bytes_down": 20, "bytes_up_raw": 40, "bytes_down_raw": 80},  # in round
        {"kind": Kind.COMM, "bytes_up": 1, "bytes_down": 2, "bytes_up_raw": 1, "bytes_down_raw": 8},
        {"kind": Kind.ROUND, "bytes_up": 5, "bytes_down": 6},  # an old run: no raw fields, raw = coded
        {"kind": Kind.EVAL, "dice": 0.5},
    ]
    assert bytes_totals(records) == {"up": 16, "down": 28, "total": 44, "up_raw": 46, "down_raw": 94,
                                     "total_raw": 140}
