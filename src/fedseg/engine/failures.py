"""Clients that fail and updates that are refused (shared by every engine): a round's training
exchange with retries and its quorum (:func:`gather_fit`), the ``metrics.jsonl`` lines, the reason
text, and the error that stops a run short of its quorum."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedseg.engine.executor import ClientExecutor
from fedseg.engine.rundir import RunDir
from fedseg.engine.screening import Screening
from fedseg.records import Field, Kind, Phase
from fedseg.types import ClientFailure, ClientUpdate

__all__ = ["FitRound", "QuorumError", "exception_reason", "failure_record", "gather_fit", "rejected_record",
           "split_replies", "quorum_message"]

logger = logging.getLogger(__name__)

_Reply = TypeVar("_Reply")


class QuorumError(RuntimeError):
    """A round kept fewer usable updates than ``federation.min_clients`` after its retries; the
    message names the round, the quorum and every client that failed or was rejected, and why.
    The runtimes re-raise it as their ``RunError``; the last checkpoint is the previous round's.

    Attributes:
        usable: the round's usable updates.
        failed: ``{client: reason}`` of the clients whose last attempt failed.
        rejected: the clients whose update was rejected.
    """

    def __init__(self, message: str, *, usable: int = 0, failed: Mapping[str, str] | None = None,
                 rejected: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.usable = usable
        self.failed = dict(failed or {})
        self.rejected = list(rejected)


def exception_reason(exc: BaseException) -> str:
    """``raised <Type>: <first line>``: what a failure record says about an exception (the type and
    the first line only: a traceback could carry paths or case ids)."""
    text = str(exc).strip().splitlines()
    return f"raised {type(exc).__name__}" + (f": {text[0][:200]}" if text else "")


def failure_record(rnd: int, failure: ClientFailure, phase: Phase, *, attempt: int = 0,
                   split: str | None = None) -> dict[str, Any]:
    """The ``kind: failure`` line of one client that did not answer usably."""
    record: dict[str, Any] = {Field.ROUND: rnd, Field.SITE: failure.client_id, Field.KIND: Kind.FAILURE,
                              Field.PHASE: phase, Field.REASON: failure.reason, Field.ATTEMPT: attempt}
    if split is not None:
        record[Field.SPLIT] = split
    return record


def rejected_record(rnd: int, client_id: str, reason: str) -> dict[str, Any]:
    """The ``kind: rejected`` line of one update the server's screening refused."""
    return {Field.ROUND: rnd, Field.SITE: client_id, Field.KIND: Kind.REJECTED, Field.PHASE: Phase.FIT,
            Field.REASON: reason}


def split_replies(clients: Sequence[str], replies: Mapping[str, _Reply | ClientFailure]
                  ) -> tuple[dict[str, _Reply], list[ClientFailure]]:
    """The replies that arrived (client order) and a :class:`ClientFailure` for every other
    requested client (its own, or "no reply" when the executor returned nothing for it)."""
    ok: dict[str, _Reply] = {}
    failed: list[ClientFailure] = []
    for client in clients:
        reply = replies.get(client)
        if isinstance(reply, ClientFailure):
            failed.append(reply)
        elif reply is None:
            failed.append(ClientFailure(client, "no reply"))
        else:
            ok[client] = reply
    return ok, failed


def quorum_message(rnd: int, usable: int, quorum: int, attempts: int, problems: Sequence[str]) -> str:
    """The text of a :class:`QuorumError`; ``problems``: one "<client>: <why>" per client."""
    lines = "; ".join(problems)
    return (f"round {rnd}: {usable} usable update(s), the quorum is {quorum} (federation.min_clients) after "
            f"{attempts} attempt(s) (federation.quorum_retries = {attempts - 1}); {lines}. Fix the failing "
            f"site(s) or lower federation.min_clients, then continue with --resume (round {rnd} is run again)")


@dataclass
class FitRound:
    """What a round's training exchange gathered over all its attempts."""

    updates: list[ClientUpdate] = field(default_factory=list)  # accepted, in sampled order
    records: list[dict[str, Any]] = field(default_factory=list)  # train records of every decoded reply
    problems: list[dict[str, Any]] = field(default_factory=list)  # failure, then rejected lines
    failures: int = 0  # failure lines (a client failing twice counts twice)
    rejections: int = 0
    bytes_up: int = 0  # every reply that arrived
    sends: int = 0  # broadcasts sent (a retried client receives it again)
    overhead: float = 0.0  # seconds spent decoding and screening


def gather_fit(
    executor: ClientExecutor,
    rnd: int,
    sampled: list[str],
    payload: bytes,
    *,
    decode: Callable[[str, bytes], ClientUpdate],
    screen: Callable[[list[ClientUpdate]], Screening],
    down_raw: int,
    quorum: int,
    retries: int,
    run: RunDir,
) -> FitRound:
    """Request, decode and screen a round's updates; while fewer than ``quorum`` are usable, ask
    the clients whose reply did not arrive usable again, at most ``retries`` times (the same
    payload and seeds). A rejected update is a verdict and is not asked again: that client's state
    already moved on with the round it sent.

    Args:
        decode: ``(client, reply bytes) -> ClientUpdate`` (raises on a reply that is not one).
        screen: the server's update validation over all decoded updates of the round.
        down_raw: the broadcast's uncoded length, added to each train record.

    Raises:
        QuorumError: still short of the quorum; the round's train, failure and rejected lines are
            written to ``metrics.jsonl`` first.
    """
    out = FitRound()
    arrived: dict[str, tuple[ClientUpdate, dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    pending, attempts = list(sampled), 0
    screening = Screening([], [])
    while pending and attempts <= retries:
        out.sends += len(pending)
        replies, failures = split_replies(pending, executor.fit(rnd, pending, payload))
        for client_id, (data, record) in replies.items():
            out.bytes_up += len(data)
            t0 = time.perf_counter()
            try:
                update = decode(client_id, data)
            except Exception as exc:  # any reply the server cannot read is that client's failure
                failures.append(ClientFailure(client_id, f"unreadable reply: {exception_reason(exc)}"))
                continue
            finally:
                out.overhead += time.perf_counter() - t0
            record[Field.BYTES_DOWN_RAW] = down_raw  # the server alone knows the uncoded broadcast
            arrived[client_id] = (update, record)
            failed.pop(client_id, None)
        for failure in sorted(failures, key=lambda f: sampled.index(f.client_id)):
            logger.warning("round %d: client %s failed (%s)", rnd, failure.client_id, failure.reason)
            out.problems.append(failure_record(rnd, failure, Phase.FIT, attempt=attempts))
            failed[failure.client_id] = failure.reason
        attempts += 1
        t0 = time.perf_counter()
        screening = screen([arrived[c][0] for c in sampled if c in arrived])
        out.overhead += time.perf_counter() - t0
        if len(screening.accepted) >= quorum:
            break
        pending = [c for c in sampled if c in failed]
    out.failures = len(out.problems)
    for rejection in screening.rejected:
        logger.warning("round %d: update rejected: %s", rnd, rejection.reason)
        out.problems.append(rejected_record(rnd, rejection.client_id, rejection.reason))
    out.rejections = len(screening.rejected)
    out.updates = screening.accepted
    out.records = [arrived[c][1] for c in sampled if c in arrived]
    if len(out.updates) < quorum:
        run.append_metrics([*out.records, *out.problems])
        problems = [f"{c}: failed ({failed[c]})" for c in sampled if c in failed]
        raise QuorumError(quorum_message(rnd, len(out.updates), quorum, attempts,
                                         problems + [r.reason for r in screening.rejected]),
                          usable=len(out.updates), failed={c: failed[c] for c in sampled if c in failed},
                          rejected=[r.client_id for r in screening.rejected])
    return out
