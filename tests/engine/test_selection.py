"""Selection on validation: the tested checkpoint, the test split read only at the end, summary.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from conftest import tiny_config
from fedseg.algorithms import ALGORITHMS
from fedseg.algorithms.base import Aggregate, Algorithm
from fedseg.config import config_from_dict
from fedseg.data.base import FederatedData, SegmentationSet
from fedseg.engine.rundir import read_metrics
from fedseg.engine.server import FederationServer
from fedseg.records import Field, Kind, ModelKind, Selection, Split, SummaryKey
from fedseg.runtime import sim
from fedseg.runtime.sim import run_inprocess
from fedseg.types import ClientUpdate, Params, ServerState


@dataclass
class WorseLater(Algorithm):
    """FedAvg until round ``break_at``; from then on the aggregate predicts background only (the
    class-1 output bias is pushed far down), so later rounds validate worse."""

    name: ClassVar[str] = "worse_later"
    break_at: int = 3

    def aggregate(self, rnd: int, updates: Sequence[ClientUpdate], global_params: Params,
                  server_state: ServerState) -> Aggregate:
        agg = super().aggregate(rnd, updates, global_params, server_state)
        if rnd >= self.break_at:
            bias = next(k for k in reversed(list(agg.params)) if k.endswith("bias"))
            agg = replace(agg, params={**agg.params, bias: agg.params[bias] - torch.tensor([-100.0, 100.0])})
        return agg


@pytest.fixture
def worse_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the toy algorithm for this test only."""
    monkeypatch.setitem(ALGORITHMS._items, WorseLater.name, WorseLater)


def _eval(records: list[dict[str, Any]], split: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in records if r[Field.KIND] == Kind.EVAL and r[Field.SPLIT] == split
            and all(r.get(k) == v for k, v in match.items())]


def test_the_tested_checkpoint_is_the_best_validation_round(tmp_path: Path, worse_later: None) -> None:
    cfg = tiny_config({"name": "worse_later", "break_at": 3}, rounds=4)
    result = run_inprocess(config_from_dict(cfg), tmp_path / "r", write_report=False)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    val = {rnd: np.mean([r[Field.DICE] for r in _eval(records, Split.VAL, model=ModelKind.GLOBAL, round=rnd)])
           for rnd in range(1, 5)}
    assert max(val[3], val[4]) < max(val[1], val[2])  # the run really gets worse late
    best = max(val, key=lambda k: (val[k], -k))
    assert result.summary[SummaryKey.SELECTION] == {"mode": "best_val", "round": best, "per_client": {}}
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "best.pt", weights_only=False)
    assert ckpt["round"] == best and ckpt["val_dice"] == pytest.approx(val[best])
    tested = _eval(records, Split.TEST, model=ModelKind.GLOBAL, selection=Selection.BEST_VAL)
    last = _eval(records, Split.TEST, model=ModelKind.GLOBAL, selection=Selection.LAST)
    assert {r[Field.SELECTED_ROUND] for r in tested} == {best} and {r[Field.SELECTED_ROUND] for r in last} == {4}
    assert np.mean([r[Field.DICE] for r in tested]) > np.mean([r[Field.DICE] for r in last])
    summary = result.summary
    assert {s: m[Field.DICE] for s, m in summary[SummaryKey.TEST][ModelKind.GLOBAL].items()} == \
        {r[Field.SITE]: r[Field.DICE] for r in tested}
    assert {s: m[Field.DICE] for s, m in summary[SummaryKey.TEST_LAST][ModelKind.GLOBAL].items()} == \
        {r[Field.SITE]: r[Field.DICE] for r in last}


def test_select_last_tests_only_the_last_round(tmp_path: Path, worse_later: None) -> None:
    cfg = tiny_config({"name": "worse_later", "break_at": 2}, rounds=2, eval={"select": "last"})
    result = run_inprocess(config_from_dict(cfg), tmp_path / "r", write_report=False)
    test = _eval(read_metrics(tmp_path / "r" / "metrics.jsonl"), Split.TEST)
    assert test and {r[Field.SELECTION] for r in test} == {Selection.LAST}
    assert not (tmp_path / "r" / "checkpoints" / "best.pt").exists()
    assert result.summary[SummaryKey.SELECTION]["round"] == 2
    assert result.summary[SummaryKey.TEST] == result.summary[SummaryKey.TEST_LAST]


class SpySet(SegmentationSet):
    """A test split that logs every read of its tensors (with whether training had ended)."""

    reads: ClassVar[list[bool]] = []
    training_over: ClassVar[list[bool]] = [False]

    def __getattribute__(self, name: str) -> Any:
        if name in ("images", "masks", "spacing", "weak"):
            SpySet.reads.append(SpySet.training_over[0])
        return super().__getattribute__(name)


def test_the_test_split_is_not_read_before_training_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SpySet.reads.clear()
    SpySet.training_over[0] = False
    original_load, original_test = sim.load_training_data, FederationServer.score_test

    def load(*args: Any, **kwargs: Any) -> FederatedData:
        data = original_load(*args, **kwargs)  # the pre-training data check reads every split
        for site in data.sites:
            t = site.test
            site.test = SpySet(t.images, t.masks, t.spacing, list(t.ids), dict(t.weak), t.supervision)
        SpySet.reads.clear()
        return data

    def score_test(self: FederationServer, executor: Any) -> list[dict[str, Any]]:
        SpySet.training_over[0] = True
        return original_test(self, executor)

    monkeypatch.setattr(sim, "load_training_data", load)
    monkeypatch.setattr(FederationServer, "score_test", score_test)
    run_inprocess(config_from_dict(tiny_config("fedbn", rounds=2)), tmp_path / "r", write_report=False)
    assert SpySet.reads and all(SpySet.reads), "the test split was read before the end of training"


@pytest.mark.parametrize("name", ["fedbn", "fedper", "fedrep"])
def test_personal_methods_are_judged_by_their_personal_test_scores(tmp_path: Path, name: str) -> None:
    algo = {"name": name, "head_epochs": 1} if name == "fedrep" else name
    result = run_inprocess(config_from_dict(tiny_config(algo, rounds=3)), tmp_path / name, write_report=False)
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary[SummaryKey.JUDGED_BY] == ModelKind.PERSONAL
    records = read_metrics(tmp_path / name / "metrics.jsonl")
    personal = _eval(records, Split.TEST, model=ModelKind.PERSONAL, selection=Selection.BEST_VAL)
    table = summary[SummaryKey.TEST][ModelKind.PERSONAL]
    assert table == {r[Field.SITE]: {k: r[k] for k in table[r[Field.SITE]]} for r in personal}
    assert summary[SummaryKey.SELECTION]["per_client"] == {r[Field.SITE]: r[Field.SELECTED_ROUND] for r in personal}
    for site, rnd in summary[SummaryKey.SELECTION]["per_client"].items():  # each client's own best val round
        val = {r[Field.ROUND]: r[Field.DICE] for r in _eval(records, Split.VAL, model=ModelKind.PERSONAL, site=site)}
        assert rnd == max(val, key=lambda k: (val[k], -k))
    mean = summary[SummaryKey.MEAN][ModelKind.PERSONAL]
    dice, n = [r[Field.DICE] for r in personal], [r[Field.N] for r in personal]
    assert mean["dice"] == pytest.approx(np.mean(dice))
    assert mean["dice_image"] == pytest.approx(np.dot(dice, n) / sum(n))


def test_resumed_run_keeps_the_best_checkpoint_and_summary(tmp_path: Path) -> None:
    cfg = tiny_config("fedbn", rounds=3)
    full = run_inprocess(config_from_dict(cfg), tmp_path / "full", write_report=False)
    two = config_from_dict({**cfg, "federation": {**cfg["federation"], "rounds": 2}})
    run_inprocess(two, tmp_path / "part", write_report=False)
    (tmp_path / "part" / "config.yaml").unlink()  # the 2-round config differs only in rounds
    resumed = run_inprocess(config_from_dict(cfg), tmp_path / "part", resume=True, write_report=False)
    assert resumed.summary[SummaryKey.SELECTION] == full.summary[SummaryKey.SELECTION]
    assert resumed.summary[SummaryKey.TEST] == full.summary[SummaryKey.TEST]
    a, b = (torch.load(d / "checkpoints" / "best.pt", weights_only=False) for d in (tmp_path / "full", tmp_path / "part"))
    assert a["round"] == b["round"] and all(torch.equal(v, b["global_params"][k]) for k, v in a["global_params"].items())
