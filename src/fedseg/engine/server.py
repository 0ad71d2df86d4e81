"""The server side, shared by every engine: sampling, broadcast, aggregation, evaluation rounds,
metrics and atomic checkpoints. The transport is a :class:`ClientExecutor`: the in-process
runtime calls :class:`~fedseg.engine.client.ClientRuntime` objects directly, the Flower runtime
sends messages to SuperNodes."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from fedseg.algorithms.base import Algorithm
from fedseg.codecs import build_wire_codecs
from fedseg.config import ConfigError, RunConfig
from fedseg.registry import suggest
from fedseg.engine import wire
from fedseg.engine.client import overrides_personalize
from fedseg.engine.evaluate import improves
from fedseg.engine.executor import ClientExecutor, sample_clients
from fedseg.engine.failures import FitRound, QuorumError, exception_reason, failure_record, gather_fit, split_replies
from fedseg.engine.messages import encode_broadcast
from fedseg.engine.privacy import ClientDP, check_client_dp
from fedseg.engine.progress import ProgressSink
from fedseg.engine.rundir import RunDir, read_metrics
from fedseg.engine.screening import Screening, screen_updates
from fedseg.engine.state_store import ClientStateStore, atomic_torch_save
from fedseg.engine.summary import summarize
from fedseg.engine.tracking import close_sinks, open_sinks
from fedseg.engine.traffic import comm_record
from fedseg.io.safe import load_checkpoint
from fedseg.records import METRIC_KEYS, SERVER, Field, Kind, ModelKind, Phase, Selection, Split
from fedseg.types import ClientFailure, ClientState, ClientUpdate, Params, Scalar, ServerState

__all__ = ["ClientExecutor", "FederationServer", "QuorumError", "sample_clients", "SERVER", "METRIC_KEYS"]

logger = logging.getLogger(__name__)


class FederationServer:
    """Runs the rounds of one federation against a :class:`ClientExecutor`.

    Args:
        fit_clients: the clients that train (the pooled client for the centralised reference);
            ``federation.train_sites`` keeps only the sites it lists (the others never train but
            are still evaluated).
        eval_clients: the clients that evaluate (every site).
        frozen: the algorithm's frozen keys (``Algorithm.frozen_keys``), left out of the global
            parameters; ``init_params`` stays the codec template both sides know.
        local: the algorithm's local keys (``Algorithm.local_keys``): every update must carry
            exactly the global keys without them. None: unknown (only keys outside the global
            parameters are refused).
        declared_sizes: each training client's training-split size as declared at the start of
            the run (in-process: from its data; Flower: from the sites' reports); an update's
            ``num_examples`` is checked against it (:mod:`fedseg.engine.screening`). Settable later.

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
        frozen: Collection[str] = (),
        local: Collection[str] | None = None,
        declared_sizes: Mapping[str, int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.algorithm = algorithm
        self.run = run
        self.run.sinks.extend(open_sinks(cfg, run.root))  # tracking: the records of metrics.jsonl, nothing else
        check_client_dp(cfg, algorithm)
        self.fit_clients = self._training_clients(cfg, algorithm, fit_clients, eval_clients)
        self.eval_clients = eval_clients
        self.progress = progress or ProgressSink()
        # the algorithm's frozen keys are never global: in no broadcast and no checkpoint
        self.global_params: Params = copy.deepcopy({k: v for k, v in init_params.items() if k not in frozen})
        self.server_state: ServerState = algorithm.init_server_state(self.global_params)
        self.phase = "federated"
        self.codecs = build_wire_codecs(cfg.codec)
        self.codec_template = init_params  # shapes both sides know (the seeded model), never modified
        self.best: dict[str, Any] | None = None  # {"round", "dice"} of checkpoints/best.pt
        self.num_examples: dict[str, int] = {}  # each client's last n_k (weights of unseen models)
        self.unseen: Params | None = None  # the last round's unseen model, once computed
        self.shared_keys: set[str] | None = None if local is None else set(self.global_params) - set(local)
        self.declared_sizes: dict[str, int] = dict(declared_sizes or {})
        self.client_dp = ClientDP.for_run(cfg, run.root, population=len(self.fit_clients), sampled=len(
            sample_clients(self.fit_clients, cfg.federation.fraction, cfg.federation.min_clients, cfg.seed, 1))
        ) if cfg.privacy.client.enabled else None  # client-level DP replaces the algorithm's aggregate

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
                "best": self.best,
                "num_examples": self.num_examples,
                "unseen_params": self.unseen,
            },
            self.run.checkpoint,
        )
        self.run.write_json(
            self.run.checkpoint_meta, {"round": rnd, "rounds": self.cfg.federation.rounds, "phase": self.phase}
        )
        executor.committed()

    def load_checkpoint(self, executor: ClientExecutor) -> int:
        """Restore the last checkpoint; returns its round."""
        ckpt = load_checkpoint(self.run.checkpoint, what="--resume")
        self.global_params = ckpt["global_params"]
        self.server_state = ckpt["server_state"]
        self.phase = str(ckpt.get("phase", "federated"))
        self.best = ckpt.get("best")
        self.num_examples = dict(ckpt.get("num_examples") or {})
        if ckpt.get("client_states") is not None:
            executor.restore(ckpt["client_states"])
        return int(ckpt["round"])

    def _selection_sites(self) -> list[str]:
        """The sites whose validation Dice selects the global model: those that train (every site
        for the pooled reference); a site that never trains stands for unseen data."""
        if self.algorithm.pooled_data:
            return list(self.eval_clients)
        return [c for c in self.eval_clients if c in self.fit_clients]

    def _track_best(self, rnd: int, records: Sequence[dict[str, Any]]) -> None:
        """``eval.select: best_val``: write ``checkpoints/best.pt`` (atomically) when the global
        model's mean validation Dice over the training sites beats the best so far. Not for a method
        with a post-federation phase (FedOAP): its personalised models exist only after the last
        round, so an earlier round's shared parameters and banks would not match them."""
        if (self.cfg.eval.select != Selection.BEST_VAL.value or not self.algorithm.has_global_model
                or overrides_personalize(self.algorithm)):
            return
        sites = set(self._selection_sites())
        dice = [float(r[Field.DICE]) for r in records if r.get(Field.MODEL) == ModelKind.GLOBAL
                and r.get(Field.SITE) in sites and Field.DICE in r]
        mean = float(np.nanmean(dice)) if dice and not all(math.isnan(d) for d in dice) else float("nan")
        if not improves(mean, None if self.best is None else float(self.best[Field.DICE])):
            return
        atomic_torch_save({"round": rnd, "global_params": self.global_params, "server_state": self.server_state,
                           "val_dice": mean, "unseen_params": None}, self.run.best_checkpoint)
        self.best = {Field.ROUND.value: rnd, Field.DICE.value: mean}

    # ------------------------------------------------------------------ rounds
    def _sized_payload(self, rnd: int, phase: str | None = None, *, params: Params | None = None,
                       server_state: ServerState | None = None, config: Mapping[str, Scalar] | None = None
                       ) -> tuple[bytes, int]:
        """The encoded broadcast of round ``rnd`` (default: of the current global model) and the
        length the same broadcast would have without the down codec."""
        extra: dict[str, Scalar] = {**({Field.PHASE.value: phase} if phase is not None else {}), **(config or {})}
        return encode_broadcast(self.algorithm, self.codecs.down, self.codec_template, rnd,
                                      self.global_params if params is None else params,
                                      self.server_state if server_state is None else server_state, extra)

    def _payload(self, rnd: int, phase: str | None = None) -> bytes:
        return self._sized_payload(rnd, phase)[0]

    def _received_params(self, payload: bytes) -> Params:
        """The broadcast parameters exactly as a client decodes them: the reference of its Delta."""
        broadcast = wire.decode(payload)
        return self.codecs.down.decode(broadcast.params, self.codec_template)

    def _decode_update(self, client_id: str, data: bytes, reference: Params) -> ClientUpdate:
        update = wire.decode(data)
        if not isinstance(update, ClientUpdate) or update.client_id != client_id:
            raise TypeError("the reply is not this client's ClientUpdate")
        update.params = self.codecs.up.decode(update.params, reference)  # w + Delta_hat
        return update

    def _fit(self, executor: ClientExecutor, rnd: int, sampled: list[str], payload: bytes, reference: Params,
             down_raw: int) -> FitRound:
        """The round's training exchange under failures (:func:`~fedseg.engine.failures.gather_fit`):
        replies decoded, every update screened (:mod:`fedseg.engine.screening`) against the global
        parameters the round started from.

        Raises:
            QuorumError: fewer usable updates than the quorum after the retries.
        """
        fed = self.cfg.federation

        def screen(updates: list[ClientUpdate]) -> Screening:
            return screen_updates(updates, self.global_params, self.algorithm, shared_keys=self.shared_keys,
                                  declared_sizes=self.declared_sizes, max_norm_ratio=fed.max_norm_ratio)

        return gather_fit(executor, rnd, sampled, payload,
                          decode=lambda client, data: self._decode_update(client, data, reference), screen=screen, down_raw=down_raw, quorum=min(fed.min_clients, len(sampled)),
                          retries=fed.quorum_retries, run=self.run)

    def run_round(self, executor: ClientExecutor, rnd: int) -> None:
        t_round = time.perf_counter()
        fed = self.cfg.federation
        sampled = sample_clients(self.fit_clients, fed.fraction, fed.min_clients, self.cfg.seed, rnd)
        self.progress.round_start(rnd, sampled)
        t0 = time.perf_counter()
        payload, down_raw = self._sized_payload(rnd)
        reference = self._received_params(payload) if self.codecs.up.active else {}
        overhead = time.perf_counter() - t0
        fit = self._fit(executor, rnd, sampled, payload, reference, down_raw)
        overhead += fit.overhead
        for update in fit.updates:
            self.num_examples[update.client_id] = int(update.num_examples)
        records = [*fit.records, *fit.problems]
        t0 = time.perf_counter()
        aggregate = self.algorithm.aggregate if self.client_dp is None else self.client_dp.aggregate
        agg = aggregate(rnd, fit.updates, self.global_params, self.server_state)
        self.global_params, self.server_state = agg.params, agg.server_state
        overhead += time.perf_counter() - t0
        records.append(
            {
                Field.ROUND: rnd,
                Field.SITE: SERVER,
                Field.KIND: Kind.ROUND,
                Field.CLIENTS: len(sampled),
                Field.FAILURES: fit.failures,
                Field.REJECTIONS: fit.rejections,
                Field.BYTES_UP: fit.bytes_up,  # what reached the server (every attempt)
                Field.BYTES_DOWN: len(payload) * fit.sends,
                Field.BYTES_UP_RAW: sum(int(r[Field.BYTES_UP_RAW]) for r in fit.records),
                Field.BYTES_DOWN_RAW: down_raw * fit.sends,
                Field.SECONDS: time.perf_counter() - t_round,
                Field.OVERHEAD_SECONDS: overhead,
            }
        )
        if self.client_dp is not None:
            records.append(self.client_dp.record(rnd, len(fit.updates)))
        # the round metrics aggregate returned: per-client weights (and their factors), other rows
        for kind, rows in ((Kind.WEIGHTS, agg.weights), (Kind.AGGREGATE, agg.metrics)):
            records.extend({Field.ROUND: rnd, Field.SITE: site, Field.KIND: kind, **row} for site, row in rows.items())
        val_records: list[dict[str, Any]] = []
        if rnd % self.cfg.eval.every == 0 or rnd == fed.rounds:
            val_records = self.evaluate(executor, rnd, Split.VAL)
            records.extend(val_records)
        self.run.append_metrics(records)
        self._track_best(rnd, val_records)  # best.pt before last.pt: a resumed round rewrites it identically
        self.save_checkpoint(executor, rnd)
        val = [r["dice"] for r in records if r.get("kind") == "eval" and "dice" in r]
        self.progress.round_end(rnd, {"val_dice": float(np.nanmean(val)) if val else float("nan")})

    def evaluate(self, executor: ClientExecutor, rnd: int, split: str, *, payload: tuple[bytes, int] | None = None,
                 clients: list[str] | None = None) -> list[dict[str, Any]]:
        """One evaluation exchange, the only way evaluation crosses the wire: the broadcast
        (``payload`` = bytes and raw length; default: the current global model's evaluation
        broadcast), the replies of every evaluating client (default: all) decoded, and its ``comm``
        line (bytes both ways, written to metrics.jsonl at once). Records in client order."""
        clients = self.eval_clients if clients is None else clients
        data, raw = self._sized_payload(rnd + 1, phase="eval") if payload is None else payload
        replies, decoded, failures = self._records(clients, executor.evaluate(rnd, clients, data, split))
        self.run.append_metrics([comm_record(rnd, Phase.EVAL, down=len(data), down_raw=raw, replies=replies,
                                             split=split),
                                 *(failure_record(rnd, f, Phase.EVAL, split=split) for f in failures)])
        return [r for c in clients for r in decoded.get(c, [])]

    @staticmethod
    def _records(clients: list[str], answers: Mapping[str, bytes | ClientFailure]
                 ) -> tuple[dict[str, bytes], dict[str, list[dict[str, Any]]], list[ClientFailure]]:
        """Replies of an evaluation or personalize exchange: those that arrived, their decoded
        records, and a failure for every client that did not answer readably (logged here)."""
        replies, failures = split_replies(clients, answers)
        decoded: dict[str, list[dict[str, Any]]] = {}
        for client, reply in replies.items():
            try:
                decoded[client] = wire.decode_records(reply)
            except Exception as exc:  # an unreadable reply is that client's failure, not the run's
                failures.append(ClientFailure(client, f"unreadable reply: {exception_reason(exc)}"))
        for failure in failures:
            logger.warning("client %s failed (%s)", failure.client_id, failure.reason)
        return replies, decoded, failures

    def personalize(self, executor: ClientExecutor) -> None:
        """The algorithm's post-federation local phase, once, then a checkpoint."""
        rounds = self.cfg.federation.rounds
        if self.phase == "personalized" or not overrides_personalize(self.algorithm):
            return
        payload, raw = self._sized_payload(rounds + 1, phase="personalize")
        replies, decoded, failures = self._records(self.fit_clients,
                                                   executor.personalize(rounds + 1, self.fit_clients, payload))
        records = [r for c in self.fit_clients for r in decoded.get(c, [])]
        comm = comm_record(rounds, Phase.PERSONALIZE, down=len(payload), down_raw=raw, replies=replies)
        # a client whose local phase failed keeps its federated state and is evaluated with it
        self.run.append_metrics([*records, comm, *(failure_record(rounds, f, Phase.PERSONALIZE) for f in failures)])
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
            records = self.score_test(executor)
        finally:
            self.progress.stop()
        self.run.append_metrics(records)
        summary = self._summary(records)
        close_sinks(self.run)
        return summary

    # ------------------------------------------------------------------ final test
    def _selected(self) -> list[tuple[str, Params, ServerState, int]]:
        """``(selection, global params, server state, round)`` to score on test: with ``best_val``
        the best-validation checkpoint first (the last round when none was written), then the last
        round's model beside it."""
        rounds = self.cfg.federation.rounds
        last = (Selection.LAST.value, self.global_params, self.server_state, rounds)
        if self.cfg.eval.select != Selection.BEST_VAL.value:
            return [last]
        if self.best is None or not self.run.best_checkpoint.is_file():
            return [(Selection.BEST_VAL.value, *last[1:]), last]
        best = load_checkpoint(self.run.best_checkpoint, what="eval.select best_val")
        return [(Selection.BEST_VAL.value, best["global_params"], best["server_state"], int(best["round"])), last]

    def _client_states(self, executor: ClientExecutor) -> dict[str, ClientState] | None:
        """The trained clients' states where the server holds them (in-process, flower-sim: the
        checkpoint's snapshot); None in a deployment (they stay on the SuperNodes)."""
        snapshot = executor.state_snapshot()
        if snapshot is None:
            return None
        store = ClientStateStore(self.run.client_states, 0)
        store.restore(snapshot)
        return {c: store.load(c) for c in self.fit_clients}

    def score_test(self, executor: ClientExecutor) -> list[dict[str, Any]]:
        """Score the test split once per selected model (see :meth:`_selected`), after training.

        Sites that train are scored with the global model and their personalised model (the
        client picks its own best-validation snapshot under ``best_val``); sites that never
        trained with the method's unseen model (:meth:`~fedseg.algorithms.base.Algorithm.unseen_params`),
        computed here from the client states and stored in the checkpoint (best.pt / last.pt), or
        reported unavailable where the server holds no client states (a deployment).
        """
        rounds = self.cfg.federation.rounds
        states = self._client_states(executor)
        trained = set(self._selection_sites())
        unseen_sites = [c for c in self.eval_clients if c not in trained]
        records: list[dict[str, Any]] = []
        for selection, params, server_state, chosen in self._selected():
            config: dict[str, Scalar] = {Field.SELECTION.value: selection, Field.SELECTED_ROUND.value: chosen}
            payload = self._sized_payload(chosen + 1, phase="eval", params=params, server_state=server_state,
                                          config=config)
            records.extend(self.evaluate(executor, rounds, Split.TEST, payload=payload))
            # a method whose unseen model needs client states returns None without them (a deployment)
            unseen = self.algorithm.unseen_params(params, states or {}, self.num_examples, selection)
            if selection == Selection.LAST.value:
                self.unseen = unseen
            else:  # best.pt is the selected checkpoint, also when no round beat another (or no global model)
                best = load_checkpoint(self.run.best_checkpoint, what="eval.select best_val") \
                    if self.best is not None and self.run.best_checkpoint.is_file() else \
                    {"round": chosen, "global_params": params, "server_state": server_state, "val_dice": float("nan")}
                atomic_torch_save({**best, "unseen_params": unseen}, self.run.best_checkpoint)
            if not unseen_sites:
                continue
            if unseen is None:
                logger.warning("no unseen model for %s (%s): %s", ", ".join(unseen_sites), self.algorithm.unseen_policy,
                               "the server holds no client states" if states is None else "the method has none")
                continue
            payload = self._sized_payload(chosen + 1, phase="eval", params=unseen, server_state=server_state,
                                    config={**config, Field.MODEL.value: ModelKind.UNSEEN.value})
            records.extend(self.evaluate(executor, rounds, Split.TEST, payload=payload, clients=unseen_sites))
        self.save_checkpoint(executor, rounds)  # now with the unseen model
        return records

    def _summary(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Write ``summary.json`` from the final test records (:func:`~fedseg.engine.summary.summarize`)."""
        summary = summarize(records, self.algorithm, self.cfg, self.best, read_metrics(self.run.metrics))
        self.run.write_json(self.run.summary, summary)
        return summary
