"""The in-process simulation engine: every client in one process, deterministic, resumable.

The round logic lives in :class:`fedseg.engine.server.FederationServer` and the client side in
:class:`fedseg.engine.client.ClientRuntime`; this module is the in-process transport between them
(every message still goes through the wire format, so it is checked and its bytes counted as on
Flower) plus the set-up of a run. A run killed at any point resumes from the last completed round
and ends bit-identical to an uninterrupted run.

A client that raises or misses ``federation.round_timeout`` is a
:class:`~fedseg.types.ClientFailure` for the server (docs/reliability.md); its stored state is
left exactly as it was before the call, so it rejoins a later round with its state intact.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fedseg.algorithms import build_algorithm
from fedseg.codecs import check_codec_config
from fedseg.config import RunConfig
from fedseg.data.base import FederatedData
from fedseg.engine import wire
from fedseg.engine.client import ClientRuntime
from fedseg.engine.executor import FitReply
from fedseg.engine.failures import QuorumError, exception_reason
from fedseg.engine.privacy import check_client_dp
from fedseg.engine.progress import ProgressSink
from fedseg.engine.seeding import configure_determinism
from fedseg.engine.server import FederationServer, sample_clients
from fedseg.engine.state_store import ClientStateStore
from fedseg.engine.trainer import resolve_device
from fedseg.records import Split
from fedseg.runtime.build import INPROCESS, POOLED_CLIENT, build_federation
from fedseg.runtime.model_init import check_model_outputs
from fedseg.runtime.common import DataSpec, RunError, load_training_data, prepare_run_dir
from fedseg.types import ClientFailure, ClientState, Params

__all__ = ["run_inprocess", "RunResult", "RunError", "InProcessExecutor", "ClientTimeout", "sample_clients",
           "POOLED_CLIENT"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass
class RunResult:
    run_dir: Path
    global_params: Params
    summary: dict[str, Any]


class ClientTimeout(Exception):
    """A client's local training ran past ``federation.round_timeout`` (raised at an epoch's end)."""


class _Deadline(ProgressSink):
    """Forwards every event to ``inner`` and stops a client's local training at the end of the
    first epoch that finishes past ``deadline`` (``time.perf_counter`` seconds)."""

    def __init__(self, inner: ProgressSink, deadline: float, limit: float) -> None:
        self.inner, self.deadline, self.limit = inner, deadline, limit

    def start(self, total_rounds: int, start_round: int) -> None:
        self.inner.start(total_rounds, start_round)

    def round_start(self, rnd: int, clients: list[str]) -> None:
        self.inner.round_start(rnd, clients)

    def client_start(self, client_id: str, epochs: int) -> None:
        self.inner.client_start(client_id, epochs)

    def epoch_end(self, client_id: str, epoch: int, epochs: int, loss: float) -> None:
        self.inner.epoch_end(client_id, epoch, epochs, loss)
        if time.perf_counter() > self.deadline:
            raise ClientTimeout(f"timed out: still training after federation.round_timeout = {self.limit:g} s "
                                f"(stopped after local epoch {epoch} of {epochs})")

    def client_end(self, client_id: str, loss: float) -> None:
        self.inner.client_end(client_id, loss)

    def round_end(self, rnd: int, summary: dict[str, float]) -> None:
        self.inner.round_end(rnd, summary)

    def message(self, text: str) -> None:
        self.inner.message(text)

    def stop(self) -> None:
        self.inner.stop()


class InProcessExecutor:
    """The in-process transport: every client is a :class:`ClientRuntime` in this process, sharing
    one model object (reset to the seeded init before each use); client states live in a
    :class:`ClientStateStore` and are checkpointed with the server.

    Failures (the executor contract of :class:`~fedseg.engine.executor.ClientExecutor`): a client
    that raises gives ``ClientFailure(client, "raised <Type>: <first line>")``; one whose call
    takes longer than ``timeout`` seconds (``federation.round_timeout``, measured per client, as
    clients run one after another here) gives a timeout failure. The deadline is checked, not
    enforced by a thread: local training stops at the end of the first epoch past it, evaluation
    is judged when it returns. A thread could not be abandoned safely (every client shares one
    model object, and Python cannot stop a thread). A client's stored state is replaced only
    when its call succeeded in time: it works on a copy.
    """

    def __init__(self, runtimes: dict[str, ClientRuntime], store: ClientStateStore, progress: ProgressSink,
                 timeout: float | None = None) -> None:
        self.runtimes = runtimes
        self.store = store
        self.progress = progress
        self.timeout = timeout
        self.raised: dict[str, BaseException] = {}
        """The exception of each client's last failed call (what stops a run when every client raised)."""

    def _call(self, client_id: str, rnd: int, call: Callable[[ClientState, ProgressSink], _T], *, save: bool
              ) -> _T | ClientFailure:
        """Run ``call`` on a copy of the client's state; store the copy only when it succeeded in time."""
        state = copy.deepcopy(self.store.load(client_id))  # a failure leaves the stored state untouched
        start = time.perf_counter()
        progress = self.progress if self.timeout is None else _Deadline(self.progress, start + self.timeout,
                                                                         self.timeout)
        try:
            result = call(state, progress)
        except Exception as exc:  # the executor contract: one client's exception is that client's failure
            logger.debug("client %s raised", client_id, exc_info=True)
            self.raised[client_id] = exc
            return ClientFailure(client_id, str(exc) if isinstance(exc, ClientTimeout) else exception_reason(exc))
        self.raised.pop(client_id, None)
        seconds = time.perf_counter() - start
        if self.timeout is not None and seconds > self.timeout:
            return ClientFailure(client_id, f"timed out: answered after {seconds:.3g} s, federation.round_timeout "
                                            f"= {self.timeout:g} s")
        if save:
            self.store.save(client_id, state, rnd)
        return result

    def fit(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, FitReply | ClientFailure]:
        return {c: self._call(c, rnd, lambda state, progress: self.runtimes[c].fit(rnd, payload, state, progress),
                              save=True) for c in clients}

    def evaluate(self, rnd: int, clients: list[str], payload: bytes, split: str) -> dict[str, bytes | ClientFailure]:
        # each reply is serialized as it would cross a wire, so the server decodes and counts it;
        # validation keeps each client's best personalised model in its state (saved then)
        return {c: self._call(c, rnd, lambda state, _: wire.encode_records(
            self.runtimes[c].evaluate(rnd, payload, state, split)), save=split == Split.VAL) for c in clients}

    def personalize(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, bytes | ClientFailure]:
        return {c: self._call(c, rnd, lambda state, progress: wire.encode_records(
            [self.runtimes[c].personalize(rnd, payload, state, progress)]), save=True) for c in clients}

    def state_snapshot(self) -> Any:
        return self.store.snapshot()

    def restore(self, snapshot: Any) -> None:
        self.store.restore(snapshot)

    def committed(self) -> None:
        self.store.prune()


def _stopped(exc: QuorumError, executor: InProcessExecutor) -> BaseException:
    """What a run short of its quorum raises: when no client produced a usable update and every
    one of them raised, the first client's own exception (a bug in the method or the engine
    surfaces with its traceback; the quorum message is added as a note), else a RunError."""
    raised = [executor.raised.get(c) for c in exc.failed]
    first = raised[0] if raised else None
    if exc.usable == 0 and not exc.rejected and first is not None and all(e is not None for e in raised) \
            and not isinstance(first, ClientTimeout):
        first.add_note(str(exc))
        return first
    return RunError(str(exc))


def run_inprocess(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    command: str | None = None,
    progress: ProgressSink | None = None,
    data: FederatedData | None = None,
    write_report: bool = True,
) -> RunResult:
    """Run (or resume) a federation in this process and return the final global parameters.

    Args:
        cfg: the validated run configuration.
        run_dir: output directory (created). A fresh run refuses a directory that already holds
            a checkpoint; ``resume=True`` requires one and the same configuration.
        command: the command line to record in ``command.txt``.
        data: pre-built data (tests); default: built from ``cfg.data``.
    """
    progress = progress or ProgressSink()
    check_codec_config(cfg.codec)  # a codec mistake is a ConfigError before any directory or data
    check_model_outputs(cfg, build_algorithm(cfg.algorithm))  # e.g. FedBCS's prototype levels on a plain U-Net
    run = prepare_run_dir(cfg, run_dir, resume=resume, command=command)
    try:  # the run directory is this process's until the run ends (RunDir.lock)
        configure_determinism(cfg.train.deterministic)
        check_client_dp(cfg, build_algorithm(cfg.algorithm))  # before any data is read
        # opt-in label corruption, validation (every problem at once, before any training), splits.json
        data = load_training_data(cfg, run, data)
        # the algorithm is looked up here (not in the builder) so tests can inject one via sim.build_algorithm
        federation = build_federation(cfg, DataSpec.of(data), resolve_device(cfg.train.device), engine=INPROCESS,
                                      data=data.sites, run=run, resume=resume, progress=progress,
                                      algorithm=build_algorithm(cfg.algorithm))
        store = ClientStateStore(run.client_states, int(cfg.federation.state_spill_mb * 2**20))
        executor = InProcessExecutor(federation.clients, store, progress, cfg.federation.round_timeout)
        server = federation.server
        # the size each client's updates must declare (screening); the pooled client's is the pooled split's
        server.declared_sizes = {c: len(rt.splits["train"]) for c, rt in federation.clients.items()
                                 if "train" in rt.splits}
        try:
            summary = server.run_all(executor, resume=resume)
        except QuorumError as exc:
            raise _stopped(exc, executor) from exc
        if write_report:
            from fedseg.report import write_report as _write_report
            from fedseg.runtime.overlays import write_test_overlays

            write_test_overlays(run_dir, data.sites)  # report pictures: this process holds every site's test data
            _write_report(run_dir)
        return RunResult(run_dir=run_dir, global_params=server.global_params, summary=summary)
    finally:
        run.unlock()
