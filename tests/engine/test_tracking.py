from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.engine.tracking import scalars
from fedseg.runtime.sim import run_inprocess


def test_scalars_of_eval_records_hold_each_site_and_the_mean() -> None:
    records = [{"kind": "eval", "round": 3, "site": s, "split": "val", "model": "global", "dice": d, "hd95": float("nan")}
               for s, d in (("a", 0.5), ("b", 0.75))]
    got = {tag: (value, step) for tag, value, step in scalars(records)}
    assert got["eval/val/global/dice/a"] == (0.5, 3) and got["eval/val/global/dice/b"] == (0.75, 3)
    assert got["eval/val/global/dice/mean"] == (0.625, 3)
    assert not any("hd95" in tag for tag in got)  # NaN is skipped


def test_scalars_of_train_and_round_records() -> None:
    got = {tag: (value, step) for tag, value, step in scalars([
        {"kind": "train", "round": 1, "site": "a", "loss": 0.25, "seconds": 2.0, "n": 4},
        {"kind": "round", "round": 1, "site": "__server__", "seconds": 3.0, "bytes_up": 10, "clients": 2},
    ])}
    assert got == {"train/loss/a": (0.25, 1), "train/seconds/a": (2.0, 1), "round/seconds": (3.0, 1),
                   "round/bytes_up": (10.0, 1), "round/clients": (2.0, 1)}


def test_tensorboard_event_files_hold_the_per_round_validation_dice(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config("fedavg", dims=2, rounds=2, tracking={"tensorboard": True})
    run_inprocess(config_from_dict(cfg), tmp_path / "run", write_report=False)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
           if r["kind"] == "eval" and r["split"] == "val" and r["site"] == "site0" and r["model"] == "global"]
    got = [(e.step, e.value) for e in events.Scalars("eval/val/global/dice/site0")]
    assert [(r["round"], pytest.approx(r["dice"], abs=1e-6)) for r in val] == got and len(got) == 2
    assert [e.step for e in events.Scalars("eval/val/global/dice/mean")] == [1, 2]


def test_tracking_is_off_by_default(tmp_path: Path) -> None:
    run_inprocess(config_from_dict(tiny_config("fedavg", dims=2, rounds=1)), tmp_path / "run", write_report=False)
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_a_missing_tensorboard_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from fedseg.engine.tracking import TensorBoardSink, TrackingError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(TrackingError, match=r"\[tracking\] extra"):
        TensorBoardSink(tmp_path / "tb")
