"""Dropouts and stragglers in-process: a client that raises or misses the deadline is a logged
failure, the round goes on with the others while the quorum holds, the failed client rejoins with
its state as before, and a round short of its quorum is retried and then stops the run clearly."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_config
from fedseg.algorithms.base import StateKey
from fedseg.config import config_from_dict
from fedseg.engine.client import ClientRuntime
from fedseg.engine.rundir import read_metrics
from fedseg.records import Field, Kind, Phase, Split, SummaryKey
from fedseg.runtime import sim
from fedseg.runtime.sim import RunError, run_inprocess
from fedseg.types import ClientState

Fault = Callable[[str, int, int], bool]  # (client, round, attempt) -> raise?


class Injected(RuntimeError):
    """The fault the tests inject."""


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def _same_state(a: ClientState, b: ClientState) -> bool:
    """The training state is equal (the validation snapshot is left out: evaluating a new global
    model on the client's own validation data may update it in a round the client did not train)."""
    skip = {str(StateKey.BEST_VAL), str(StateKey.LAST_VAL)}
    ta, tb = ({k: v for k, v in _tensors({k: v for k, v in s.items() if k not in skip})} for s in (a, b))
    return ta.keys() == tb.keys() and bool(ta) and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture
def faulty_fit(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Fault], dict[tuple[str, int], list[ClientState]]]:
    """The fault-injection hook: ``faults.append(fn)`` makes a client raise in its ``fit`` when
    ``fn(client, round, attempt)`` is true, after it trained and changed its state (so a stored
    state that stays as before proves the executor worked on a copy). Also records, per (client,
    round), a copy of the state every ``fit`` call started from."""
    faults: list[Fault] = []
    started: dict[tuple[str, int], list[ClientState]] = {}
    original = ClientRuntime.fit

    def fit(self: ClientRuntime, rnd: int, payload: bytes, state: ClientState, progress: Any = None) -> Any:
        calls = started.setdefault((self.client_id, rnd), [])
        attempt = len(calls)
        calls.append(torch.utils._pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, state))
        reply = original(self, rnd, payload, state, progress)
        if any(f(self.client_id, rnd, attempt) for f in faults):
            raise Injected(f"injected fault in round {rnd}\nsecond line never logged")
        return reply

    monkeypatch.setattr(ClientRuntime, "fit", fit)
    return faults, started


def _cfg(**federation: Any) -> Any:
    # FedBN keeps its norm layers in client state and a persistent optimizer adds Adam's moments:
    # both must survive a failed round unchanged
    return config_from_dict(tiny_config("fedbn", rounds=4, sites=3, train={"optimizer_state": "persist"},
                                        federation={"rounds": 4, **federation}))


def test_a_client_raising_in_round_2_of_4_is_logged_and_rejoins_with_its_state(
        tmp_path: Path, faulty_fit: tuple[list[Fault], dict[tuple[str, int], list[ClientState]]]) -> None:
    faults, started = faulty_fit
    faults.append(lambda client, rnd, attempt: client == "site1" and rnd == 2)
    result = run_inprocess(_cfg(), tmp_path / "r", write_report=True)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    failures = [r for r in records if r[Field.KIND] == Kind.FAILURE]
    assert failures == [{Field.ROUND: 2, Field.SITE: "site1", Field.KIND: Kind.FAILURE, Field.PHASE: Phase.FIT,
                         Field.ATTEMPT: 0, Field.REASON: "raised Injected: injected fault in round 2"}]
    rounds = {r[Field.ROUND]: r for r in records if r[Field.KIND] == Kind.ROUND}
    assert [rounds[i][Field.FAILURES] for i in (1, 2, 3, 4)] == [0, 1, 0, 0]
    weighted = {rnd: sorted(r[Field.SITE] for r in records if r[Field.KIND] == Kind.WEIGHTS and r[Field.ROUND] == rnd)
                for rnd in (1, 2, 3)}
    assert weighted == {1: ["site0", "site1", "site2"], 2: ["site0", "site2"], 3: ["site0", "site1", "site2"]}
    # quorum 1 held: no retry; round 3 started from the state site1 had after round 1
    assert len(started[("site1", 2)]) == 1
    assert _same_state(started[("site1", 3)][0], started[("site1", 2)][0])
    assert not _same_state(started[("site1", 2)][0], started[("site1", 1)][0])  # round 1 did change it
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary[SummaryKey.FAILURES] == {"site1": {"failure": 1, "rejected": 0}}
    assert result.summary[SummaryKey.FAILURES] == summary[SummaryKey.FAILURES]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Failures and rejected updates" in report
    assert "| 2 | site1 | fit | failure | raised Injected: injected fault in round 2 |" in report
    assert "second line" not in (tmp_path / "r" / "metrics.jsonl").read_text()


def test_a_retried_client_that_answers_gives_the_uninterrupted_result(
        tmp_path: Path, faulty_fit: tuple[list[Fault], dict[tuple[str, int], list[ClientState]]]) -> None:
    """min_clients 3 = every client: the round is short of its quorum, site1 is asked again with the
    same payload, seed and state, and the run ends exactly as one without the fault."""
    faults, started = faulty_fit
    clean = run_inprocess(_cfg(min_clients=3), tmp_path / "clean", write_report=False)
    faults.append(lambda client, rnd, attempt: client == "site1" and rnd == 2 and attempt == 0)
    started.clear()
    flaky = run_inprocess(_cfg(min_clients=3), tmp_path / "flaky", write_report=False)
    assert len(started[("site1", 2)]) == 2 and len(started[("site0", 2)]) == 1  # only the failed client again
    assert _same_state(started[("site1", 2)][1], started[("site1", 2)][0])
    assert all(torch.equal(clean.global_params[k], flaky.global_params[k]) for k in clean.global_params)
    failures = [r for r in read_metrics(tmp_path / "flaky" / "metrics.jsonl") if r[Field.KIND] == Kind.FAILURE]
    assert [(r[Field.ROUND], r[Field.SITE], r[Field.ATTEMPT]) for r in failures] == [(2, "site1", 0)]


def test_quorum_lost_is_retried_then_stops_with_a_clear_error_and_resume_finishes(
        tmp_path: Path, faulty_fit: tuple[list[Fault], dict[tuple[str, int], list[ClientState]]]) -> None:
    faults, started = faulty_fit
    faults.append(lambda client, rnd, attempt: client == "site1" and rnd == 2)
    with pytest.raises(RunError) as info:
        run_inprocess(_cfg(min_clients=3, quorum_retries=2), tmp_path / "r", write_report=False)
    message = str(info.value)
    assert "round 2: 2 usable update(s), the quorum is 3 (federation.min_clients) after 3 attempt(s)" in message
    assert "site1: failed (raised Injected: injected fault in round 2)" in message
    assert "--resume" in message
    assert len(started[("site1", 2)]) == 3  # the first attempt and 2 retries
    failures = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if r[Field.KIND] == Kind.FAILURE]
    assert [(r[Field.ROUND], r[Field.SITE], r[Field.ATTEMPT]) for r in failures] == [(2, "site1", a) for a in range(3)]
    # the site is fixed: --resume re-runs round 2 and ends as a run that never failed
    faults.clear()
    resumed = run_inprocess(_cfg(min_clients=3, quorum_retries=2), tmp_path / "r", resume=True, write_report=False)
    clean = run_inprocess(_cfg(min_clients=3, quorum_retries=2), tmp_path / "clean", write_report=False)
    assert all(torch.equal(clean.global_params[k], resumed.global_params[k]) for k in clean.global_params)
    assert not [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if r[Field.KIND] == Kind.FAILURE]


def test_every_client_raising_surfaces_the_first_exception_with_the_quorum_note(
        tmp_path: Path, faulty_fit: tuple[list[Fault], dict[tuple[str, int], list[ClientState]]]) -> None:
    faults, _ = faulty_fit
    faults.append(lambda client, rnd, attempt: rnd == 1)
    with pytest.raises(Injected, match="injected fault in round 1") as info:
        run_inprocess(_cfg(quorum_retries=0), tmp_path / "r", write_report=False)
    assert any("round 1: 0 usable update(s), the quorum is 1" in note for note in info.value.__notes__)


class _Clock:
    """``time`` for the in-process executor, with a client that "sleeps" by moving it forward."""

    offset = 0.0

    @classmethod
    def perf_counter(cls) -> float:
        return time.perf_counter() + cls.offset


def test_a_client_past_the_deadline_is_a_timeout_failure_and_keeps_its_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        faulty_fit: tuple[list[Fault], dict[tuple[str, int], list[ClientState]]]) -> None:
    _, started = faulty_fit
    monkeypatch.setattr(sim, "time", _Clock)
    inner = ClientRuntime.fit

    def slow(self: ClientRuntime, rnd: int, payload: bytes, state: ClientState, progress: Any = None) -> Any:
        if self.client_id == "site2" and rnd == 3:
            _Clock.offset += 1000.0  # a straggler: 1000 s pass before its first epoch ends
        return inner(self, rnd, payload, state, progress)

    monkeypatch.setattr(ClientRuntime, "fit", slow)
    run_inprocess(_cfg(round_timeout=100.0), tmp_path / "r", write_report=False)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    failures = [r for r in records if r[Field.KIND] == Kind.FAILURE]
    assert [(r[Field.ROUND], r[Field.SITE], r[Field.PHASE]) for r in failures] == [(3, "site2", Phase.FIT)]
    assert failures[0][Field.REASON] == ("timed out: still training after federation.round_timeout = 100 s "
                                         "(stopped after local epoch 1 of 1)")
    assert _same_state(started[("site2", 4)][0], started[("site2", 3)][0])


def test_a_failed_evaluation_is_logged_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = ClientRuntime.evaluate

    def evaluate(self: ClientRuntime, rnd: int, payload: bytes, state: ClientState, split: str) -> Any:
        if self.client_id == "site0" and split == Split.VAL and rnd == 1:
            raise OSError("disk gone")
        return original(self, rnd, payload, state, split)

    monkeypatch.setattr(ClientRuntime, "evaluate", evaluate)
    run_inprocess(config_from_dict(tiny_config(rounds=2)), tmp_path / "r", write_report=False)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    failures = [r for r in records if r[Field.KIND] == Kind.FAILURE]
    assert failures == [{Field.ROUND: 1, Field.SITE: "site0", Field.KIND: Kind.FAILURE, Field.PHASE: Phase.EVAL,
                         Field.SPLIT: Split.VAL, Field.ATTEMPT: 0, Field.REASON: "raised OSError: disk gone"}]
    val = {(r[Field.ROUND], r[Field.SITE]) for r in records if r[Field.KIND] == Kind.EVAL and r[Field.SPLIT] == "val"}
    assert (1, "site0") not in val and {(1, "site1"), (2, "site0"), (2, "site1")} <= val


def test_the_server_turns_a_missing_or_unreadable_reply_into_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any executor (Flower's too) may omit a client or pass on bytes that are no update."""
    original = sim.InProcessExecutor.fit

    def fit(self: sim.InProcessExecutor, rnd: int, clients: list[str], payload: bytes) -> Any:
        replies = dict(original(self, rnd, clients, payload))
        if rnd == 1:
            del replies["site1"]
            data, record = replies["site2"]
            replies["site2"] = (data[:10], record)
        return replies

    monkeypatch.setattr(sim.InProcessExecutor, "fit", fit)
    run_inprocess(config_from_dict(tiny_config(rounds=2, sites=3)), tmp_path / "r", write_report=False)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    failures = [(r[Field.ROUND], r[Field.SITE], r[Field.REASON]) for r in records if r[Field.KIND] == Kind.FAILURE]
    assert [f[:2] for f in failures] == [(1, "site1"), (1, "site2")]
    assert failures[0][2] == "no reply" and failures[1][2].startswith("unreadable reply: raised ")
    assert [r[Field.SITE] for r in records if r[Field.KIND] == Kind.WEIGHTS and r[Field.ROUND] == 1] == ["site0"]
