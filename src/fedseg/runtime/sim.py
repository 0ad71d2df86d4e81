"""The in-process simulation engine: every client in one process, deterministic, resumable.

The round logic lives in :class:`fedseg.engine.server.FederationServer` and the client side in
:class:`fedseg.engine.client.ClientRuntime`; this module is the in-process transport between them
(every message still goes through the wire format, so it is checked and its bytes counted as on
Flower) plus the set-up of a run. A run killed at any point resumes from the last completed round
and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedseg.algorithms import build_algorithm
from fedseg.config import RunConfig
from fedseg.data.base import FederatedData
from fedseg.engine import wire
from fedseg.engine.client import ClientRuntime
from fedseg.engine.privacy import check_client_dp
from fedseg.engine.progress import ProgressSink
from fedseg.engine.seeding import configure_determinism
from fedseg.engine.server import FederationServer, sample_clients
from fedseg.engine.state_store import ClientStateStore
from fedseg.engine.trainer import resolve_device
from fedseg.records import Split
from fedseg.runtime.build import INPROCESS, POOLED_CLIENT, build_federation
from fedseg.runtime.common import DataSpec, RunError, load_training_data, prepare_run_dir
from fedseg.types import Params

__all__ = ["run_inprocess", "RunResult", "RunError", "InProcessExecutor", "sample_clients", "POOLED_CLIENT"]


@dataclass
class RunResult:
    run_dir: Path
    global_params: Params
    summary: dict[str, Any]


class InProcessExecutor:
    """The in-process transport: every client is a :class:`ClientRuntime` in this process, sharing
    one model object (reset to the seeded init before each use); client states live in a
    :class:`ClientStateStore` and are checkpointed with the server."""

    def __init__(self, runtimes: dict[str, ClientRuntime], store: ClientStateStore, progress: ProgressSink) -> None:
        self.runtimes = runtimes
        self.store = store
        self.progress = progress

    def fit(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, tuple[bytes, dict[str, Any]]]:
        out = {}
        for client_id in clients:
            state = self.store.load(client_id)
            out[client_id] = self.runtimes[client_id].fit(rnd, payload, state, self.progress)
            self.store.save(client_id, state, rnd)
        return out

    def evaluate(self, rnd: int, clients: list[str], payload: bytes, split: str) -> dict[str, bytes]:
        # each reply is serialized as it would cross a wire, so the server decodes and counts it
        out = {}
        for client_id in clients:
            state = self.store.load(client_id)
            out[client_id] = wire.encode_records(self.runtimes[client_id].evaluate(rnd, payload, state, split))
            if split == Split.VAL:  # validation keeps each client's best personalised model in its state
                self.store.save(client_id, state, rnd)
        return out

    def personalize(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, bytes]:
        out = {}
        for client_id in clients:
            state = self.store.load(client_id)
            out[client_id] = wire.encode_records([self.runtimes[client_id].personalize(rnd, payload, state,
                                                                                       self.progress)])
            self.store.save(client_id, state, rnd)
        return out

    def state_snapshot(self) -> Any:
        return self.store.snapshot()

    def restore(self, snapshot: Any) -> None:
        self.store.restore(snapshot)

    def committed(self) -> None:
        self.store.prune()


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
    run = prepare_run_dir(cfg, run_dir, resume=resume, command=command)
    configure_determinism(cfg.train.deterministic)
    check_client_dp(cfg, build_algorithm(cfg.algorithm))  # before any data is read
    # opt-in label corruption, validation (every problem at once, before any training), splits.json
    data = load_training_data(cfg, run, data)
    # the algorithm is looked up here (not in the builder) so tests can inject one via sim.build_algorithm
    federation = build_federation(cfg, DataSpec.of(data), resolve_device(cfg.train.device), engine=INPROCESS,
                                  data=data.sites, run=run, resume=resume, progress=progress,
                                  algorithm=build_algorithm(cfg.algorithm))
    store = ClientStateStore(run.client_states, int(cfg.federation.state_spill_mb * 2**20))
    executor = InProcessExecutor(federation.clients, store, progress)
    server = federation.server
    summary = server.run_all(executor, resume=resume)
    if write_report:
        from fedseg.report import write_report as _write_report

        _write_report(run_dir)
    return RunResult(run_dir=run_dir, global_params=server.global_params, summary=summary)
