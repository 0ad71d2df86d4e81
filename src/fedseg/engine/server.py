"""The server side, shared by every engine: sampling, broadcast, aggregation, evaluation rounds,
metrics and atomic checkpoints. The transport is a :class:`ClientExecutor`: the in-process
runtime calls :class:`~fedseg.engine.client.ClientRuntime` objects directly, the Flower runtime
sends messages to SuperNodes."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fedseg.algorithms.base import Algorithm
from fedseg.codecs import build_wire_codecs
from fedseg.config import ConfigError, RunConfig
from fedseg.registry import suggest
from fedseg.engine import wire
from fedseg.engine.client import overrides_personalize
from fedseg.engine.progress import ProgressSink
from fedseg.engine.rundir import RunDir, read_metrics
from fedseg.engine.state_store import atomic_torch_save
from fedseg.engine.traffic import bytes_totals, comm_record
from fedseg.records import Field, Phase, SummaryKey
from fedseg.types import Broadcast, ClientUpdate, Params, ServerState

__all__ = ["ClientExecutor", "FederationServer", "sample_clients", "SERVER", "METRIC_KEYS"]

SERVER = "__server__"
METRIC_KEYS = ("dice", "iou", "hd95", "precision", "recall", "n")


def sample_clients(clients: Sequence[str], fraction: float, min_clients: int, seed: int, rnd: int) -> list[str]:
    """The clients of round ``rnd``: ``max(min_clients, round(fraction*K))`` of K, seeded."""
    k = min(len(clients), max(min_clients, int(round(fraction * len(clients)))))
    if k == len(clients):
        return list(clients)
    rng = np.random.default_rng([seed, rnd])
    chosen = sorted(rng.choice(len(clients), size=k, replace=False).tolist())
    return [clients[i] for i in chosen]


class ClientExecutor(Protocol):
    """Delivers encoded messages to clients and returns their answers (the transport).

    Every reply is the serialized message the client sent (:mod:`fedseg.engine.wire` bytes), so
    the server counts what crosses the wire in both directions.
    """

    def fit(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, tuple[bytes, dict[str, Any]]]:
        """Local training on each client: ``{client: (encoded ClientUpdate, train record)}``."""
        ...

    def evaluate(self, rnd: int, clients: list[str], payload: bytes, split: str) -> dict[str, bytes]:
        """Evaluation records (global and personalised models) from each client, as the reply it
        sent: ``wire.encode_records(records)``."""
        ...

    def personalize(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, bytes]:
        """The algorithm's post-federation local phase on each client; each reply is
        ``wire.encode_records([record])``."""
        ...

    def state_snapshot(self) -> Any:
        """Client states to checkpoint with the server (None when clients keep their own)."""
        ...

    def restore(self, snapshot: Any) -> None:
        """Restore client states from a checkpoint's snapshot."""
        ...

    def committed(self) -> None:
        """Called after a checkpoint is on disk (e.g. to prune superseded state files)."""
        ...


class FederationServer:
    """Runs the rounds of one federation against a :class:`ClientExecutor`.

    Args:
        fit_clients: the clients that train (the pooled client for the centralised reference);
            ``federation.train_sites`` keeps only the sites it lists (the others never train but
            are still evaluated).
        eval_clients: the clients that evaluate (every site).

    Raises:
        ConfigError: ``federation.train_sites`` or ``data.supervision`` names a site that is not
            one of ``eval_clients``, or ``train_sites`` is set for the centralised reference.
    """

    def __init__(
        self,
        cfg: RunConfig,
        algorithm: Algorithm,
        init_params: Params,
        run: RunDir,
        *,
        fit_clients: list[str],
        eval_clients: list[str],
        progress: ProgressSink | None = None,
    ) -> None:
        self.cfg = cfg
        self.algorithm = algorithm
        self.run = run
        self.fit_clients = self._training_clients(cfg, algorithm, fit_clients, eval_clients)
        self.eval_clients = eval_clients
        self.progress = progress or ProgressSink()
        self.global_params: Params = copy.deepcopy(init_params)
        self.server_state: ServerState = algorithm.init_server_state(self.global_params)
        self.phase = "federated"
        self.codecs = build_wire_codecs(cfg.codec)
        self.codec_template = init_params  # shapes both sides know (the seeded model), never modified

    @staticmethod
    def _training_clients(cfg: RunConfig, algorithm: Algorithm, fit: list[str], sites: list[str]) -> list[str]:
        """``fit`` restricted to ``federation.train_sites``; unknown site names in it or in
        ``data.supervision`` are refused here, where every engine knows all sites."""
        train_sites = cfg.federation.train_sites
        for key, names in (("federation.train_sites", train_sites or []), ("data.supervision", cfg.data.supervision)):
            unknown = [n for n in names if n not in sites]
            if unknown:
                raise ConfigError(f"{key} names unknown site(s) {', '.join(map(repr, unknown))}; sites: "
                                  f"{', '.join(sites)}.{''.join(suggest(n, sites) for n in unknown)}")
        if train_sites is None:
            return fit
        if algorithm.pooled_data:
            raise ConfigError("federation.train_sites cannot be used with the centralised reference (it pools every "
                              "site's training data into one client)")
        return [c for c in fit if c in train_sites]

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, executor: ClientExecutor, rnd: int) -> None:
        atomic_torch_save(
            {
                "round": rnd,
                "phase": self.phase,
                "global_params": self.global_params,
                "server_state": self.server_state,
                "client_states": executor.state_snapshot(),
            },
            self.run.checkpoint,
        )
        self.run.write_json(
            self.run.checkpoint_meta, {"round": rnd, "rounds": self.cfg.federation.rounds, "phase": self.phase}
        )
        executor.committed()

    def load_checkpoint(self, executor: ClientExecutor) -> int:
        """Restore the last checkpoint; returns its round."""
        import torch

        ckpt = torch.load(self.run.checkpoint, map_location="cpu", weights_only=False)
        self.global_params = ckpt["global_params"]
        self.server_state = ckpt["server_state"]
        self.phase = str(ckpt.get("phase", "federated"))
        if ckpt.get("client_states") is not None:
            executor.restore(ckpt["client_states"])
        return int(ckpt["round"])

    # ------------------------------------------------------------------ rounds
    def _sized_payload(self, rnd: int, phase: str | None = None) -> tuple[bytes, int]:
        """The encoded broadcast of round ``rnd`` and the length it would have without the down codec."""
        broadcast = self.algorithm.broadcast(rnd, self.global_params, self.server_state)
        if phase is not None:
            broadcast.config["phase"] = phase
        raw = wire.encoded_size(broadcast)
        broadcast.params = self.codecs.down.encode(broadcast.params, self.codec_template)
        return wire.encode(broadcast), raw

    def _payload(self, rnd: int, phase: str | None = None) -> bytes:
        return self._sized_payload(rnd, phase)[0]

    def _received_params(self, payload: bytes) -> Params:
        """The broadcast parameters exactly as a client decodes them: the reference of its Delta."""
        broadcast = wire.decode(payload)
        return self.codecs.down.decode(broadcast.params, self.codec_template)

    def run_round(self, executor: ClientExecutor, rnd: int) -> None:
        t_round = time.perf_counter()
        fed = self.cfg.federation
        sampled = sample_clients(self.fit_clients, fed.fraction, fed.min_clients, self.cfg.seed, rnd)
        self.progress.round_start(rnd, sampled)
        t0 = time.perf_counter()
        payload, down_raw = self._sized_payload(rnd)
        reference = self._received_params(payload) if self.codecs.up.active else {}
        overhead = time.perf_counter() - t0
        replies = executor.fit(rnd, sampled, payload)
        updates: list[ClientUpdate] = []
        records: list[dict[str, Any]] = []
        for client_id in sampled:
            data, record = replies[client_id]
            record[Field.BYTES_DOWN_RAW] = down_raw  # the server alone knows the uncoded broadcast
            t0 = time.perf_counter()
            update = wire.decode(data)
            if not isinstance(update, ClientUpdate) or update.client_id != client_id:
                raise TypeError(f"{client_id}: the reply is not this client's ClientUpdate")
            update.params = self.codecs.up.decode(update.params, reference)  # w + Delta_hat
            overhead += time.perf_counter() - t0
            updates.append(update)
            records.append(record)
        t0 = time.perf_counter()
        self.global_params, self.server_state = self.algorithm.aggregate(
            rnd, updates, self.global_params, self.server_state
        )
        overhead += time.perf_counter() - t0
        records.append(
            {
                "round": rnd,
                "site": SERVER,
                "kind": "round",
                "clients": len(sampled),
                Field.BYTES_UP: sum(len(replies[c][0]) for c in sampled),  # what reached the server
                Field.BYTES_DOWN: len(payload) * len(sampled),
                Field.BYTES_UP_RAW: sum(int(r[Field.BYTES_UP_RAW]) for r in records),
                Field.BYTES_DOWN_RAW: down_raw * len(sampled),
                "seconds": time.perf_counter() - t_round,
                "overhead_seconds": overhead,
            }
        )
        # per-client aggregation weights (and their factors) an algorithm chose to log, e.g. AAM
        records.extend(
            {"round": rnd, "site": site, "kind": "weights", **row}
            for site, row in self.server_state.pop("round_weights", {}).items()
        )
        if rnd % self.cfg.eval.every == 0 or rnd == fed.rounds:
            records.extend(self.evaluate(executor, rnd, "val"))
        self.run.append_metrics(records)
        self.save_checkpoint(executor, rnd)
        val = [r["dice"] for r in records if r.get("kind") == "eval" and "dice" in r]
        self.progress.round_end(rnd, {"val_dice": float(np.nanmean(val)) if val else float("nan")})

    def exchange_evaluate(self, executor: ClientExecutor, rnd: int, split: str,
                          clients: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """One evaluation exchange: broadcast, the clients' replies decoded, and its ``comm`` line
        (bytes both ways, written to metrics.jsonl at once) -- the only way evaluation crosses the wire."""
        clients = self.eval_clients if clients is None else clients
        payload, raw = self._sized_payload(rnd + 1, phase="eval")
        replies = executor.evaluate(rnd, clients, payload, split)
        self.run.append_metrics([comm_record(rnd, Phase.EVAL, down=len(payload), down_raw=raw, replies=replies,
                                             split=split)])
        return {c: wire.decode_records(data) for c, data in replies.items()}

    def evaluate(self, executor: ClientExecutor, rnd: int, split: str) -> list[dict[str, Any]]:
        """Evaluation records of every evaluating client, in client order."""
        replies = self.exchange_evaluate(executor, rnd, split)
        return [r for c in self.eval_clients for r in replies.get(c, [])]

    def personalize(self, executor: ClientExecutor) -> None:
        """The algorithm's post-federation local phase, once, then a checkpoint."""
        rounds = self.cfg.federation.rounds
        if self.phase == "personalized" or not overrides_personalize(self.algorithm):
            return
        payload, raw = self._sized_payload(rounds + 1, phase="personalize")
        replies = executor.personalize(rounds + 1, self.fit_clients, payload)
        records = [r for c in self.fit_clients if c in replies for r in wire.decode_records(replies[c])]
        comm = comm_record(rounds, Phase.PERSONALIZE, down=len(payload), down_raw=raw, replies=replies)
        self.run.append_metrics([*records, comm])
        self.phase = "personalized"
        self.save_checkpoint(executor, rounds)

    def run_all(self, executor: ClientExecutor, *, resume: bool = False) -> dict[str, Any]:
        """All remaining rounds, the post-federation phase and the final test evaluation."""
        start = 1
        if resume:
            start = self.load_checkpoint(executor) + 1
            self.run.truncate_metrics_after(start - 1, keep_personalize=self.phase == "personalized")
        rounds = self.cfg.federation.rounds
        self.progress.start(rounds, start)
        try:
            for rnd in range(start, rounds + 1):
                self.run_round(executor, rnd)
            self.personalize(executor)
            records = self.evaluate(executor, rounds, "test")
        finally:
            self.progress.stop()
        self.run.append_metrics(records)
        return self._summary(records)

    def _summary(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        summary: dict[str, Any] = {"algorithm": self.algorithm.name, "rounds": self.cfg.federation.rounds, "test": {}}
        for r in records:
            summary["test"].setdefault(r["model"], {})[r["site"]] = {k: r[k] for k in METRIC_KEYS if k in r}
        for model_kind, sites in summary["test"].items():
            dice = [m["dice"] for m in sites.values()]
            summary.setdefault("mean", {})[model_kind] = {"dice": float(np.nanmean(dice)) if dice else float("nan")}
        summary[SummaryKey.BYTES] = bytes_totals(read_metrics(self.run.metrics))
        self.run.write_json(self.run.summary, summary)
        return summary
