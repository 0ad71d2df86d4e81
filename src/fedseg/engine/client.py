"""The client side, shared by every engine: the hook sequence of a round and :class:`ClientRuntime`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fedseg.algorithms.base import Algorithm, ClientContext, LocalTrainer
from fedseg.codecs import build_wire_codecs
from fedseg.config import ConfigError, RunConfig
from fedseg.data.base import SegmentationSet
from fedseg.engine import wire
from fedseg.engine.evaluate import evaluate, sliding_window_for
from fedseg.engine.progress import ProgressSink
from fedseg.engine.seeding import derive_seed, seed_everything
from fedseg.engine.trainer import Trainer
from fedseg.records import Field
from fedseg.types import Broadcast, ClientState, ClientUpdate, Params

__all__ = [
    "ClientRuntime",
    "run_client_round",
    "run_client_personalization",
    "overrides_personalize",
    "PrivacyError",
]


class PrivacyError(RuntimeError):
    """An algorithm tried to send a parameter it declared local."""


def run_client_round(
    algorithm: Algorithm,
    model: nn.Module,
    *,
    client_id: str,
    rnd: int,
    broadcast: Broadcast,
    state: ClientState,
    trainer: LocalTrainer,
) -> ClientUpdate:
    """Run the client hooks for one round and return the message for the server.

    ``state`` is updated in place (the caller persists it). Raises :class:`PrivacyError` if the
    update carries any of the algorithm's local keys.
    """
    ctx = ClientContext(client_id=client_id, round=rnd, broadcast=broadcast, state=state, device=trainer.device)
    algorithm.on_round_start(model, ctx)
    metrics = algorithm.local_train(model, ctx, trainer)
    update = algorithm.client_update(model, ctx, trainer.num_examples, metrics)
    algorithm.on_round_end(model, ctx)
    leaked = algorithm.local_keys(model) & set(update.params)
    if leaked:
        raise PrivacyError(
            f"{type(algorithm).__name__} put local keys in its update: {sorted(leaked)[:5]}"
            f"{' ...' if len(leaked) > 5 else ''}"
        )
    return update


def overrides_personalize(algorithm: Algorithm) -> bool:
    """Whether the algorithm has a post-federation local phase."""
    return type(algorithm).personalize is not Algorithm.personalize


def run_client_personalization(
    algorithm: Algorithm,
    model: nn.Module,
    *,
    client_id: str,
    rnd: int,
    broadcast: Broadcast,
    state: ClientState,
    trainer: LocalTrainer,
) -> dict[str, float]:
    """The local phase after the last round: load the final model, ``personalize``, keep local keys."""
    ctx = ClientContext(client_id=client_id, round=rnd, broadcast=broadcast, state=state, device=trainer.device)
    algorithm.on_round_start(model, ctx)
    metrics = algorithm.personalize(model, ctx, trainer) or {}
    algorithm.on_round_end(model, ctx)
    return metrics


class ClientRuntime:
    """Everything one client does, transport-free: the in-process executor and a Flower ClientApp
    both call it with encoded messages and the client's persistent state.

    Messages in and out are :mod:`fedseg.engine.wire` bytes, so both engines serialise, check and
    count the same bytes. State is passed in and updated in place; the caller persists it.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_index: int,
        algorithm: Algorithm,
        model: nn.Module,
        init_params: Params,
        loss_fn: nn.Module,
        cfg: RunConfig,
        splits: Mapping[str, SegmentationSet],
        num_classes: int,
        device: torch.device,
    ) -> None:
        self.client_id = client_id
        self.client_index = client_index
        self.algorithm = algorithm
        self.model = model
        self.init_params = init_params
        self.loss_fn = loss_fn
        self.cfg = cfg
        self.splits = dict(splits)
        self.num_classes = num_classes
        self.device = device
        self.codecs = build_wire_codecs(cfg.codec)
        train = self.splits.get("train")
        trains = cfg.federation.train_sites is None or client_id in cfg.federation.train_sites
        if train is not None and train.masks is None and trains and not algorithm.weak_supervision:
            raise ConfigError(
                f"site {client_id} is {train.supervision}-supervised (data.supervision); algorithm {algorithm.name} "
                "needs pixel masks; use fedmix or leave the site out of training with federation.train_sites"
            )

    def _broadcast(self, payload: bytes) -> Broadcast:
        """Decode the server's payload (wire format, then the down codec against the model's init)."""
        broadcast = wire.decode(payload)
        if not isinstance(broadcast, Broadcast):
            raise TypeError(f"{self.client_id}: the server payload did not decode to a Broadcast")
        broadcast.params = self.codecs.down.decode(broadcast.params, self.init_params)
        return broadcast

    def _prepare(
        self, rnd: int, payload: bytes, state: ClientState, progress: ProgressSink
    ) -> tuple[Broadcast, Trainer]:
        """Decode the broadcast, reset the model to the seeded init, seed the round, build the trainer."""
        broadcast = self._broadcast(payload)
        self.model.load_state_dict(self.init_params)
        seed = derive_seed(self.cfg.seed, rnd, self.client_index)
        seed_everything(seed)
        train = self.splits.get("train")
        if train is None:
            raise KeyError(f"{self.client_id} has no training split")
        policy = self.algorithm.resolved_optimizer_state(self.cfg.train.optimizer_state)
        trainer = Trainer(
            train,
            self.loss_fn,
            self.cfg.train.model_copy(update={"optimizer_state": policy}),
            epochs=self.cfg.federation.local_epochs,
            device=self.device,
            seed=seed,
            state=state,
            on_epoch=lambda e, n, loss: progress.epoch_end(self.client_id, e, n, loss),
            # the test split never reaches algorithm hooks, nor a weak site's val masks (evaluator only)
            eval_sets={k: v for k, v in self.splits.items() if k == "val" and train.masks is not None},
            num_classes=self.num_classes,
            eval_batch_size=self.cfg.eval.batch_size,
            window=sliding_window_for(self.cfg),
        )
        return broadcast, trainer

    def fit(
        self, rnd: int, payload: bytes, state: ClientState, progress: ProgressSink | None = None
    ) -> tuple[bytes, dict[str, Any]]:
        """One round of local training; returns the encoded update and a train record."""
        progress = progress or ProgressSink()
        broadcast, trainer = self._prepare(rnd, payload, state, progress)
        progress.client_start(self.client_id, self.cfg.federation.local_epochs)
        start = time.perf_counter()
        update = run_client_round(
            self.algorithm, self.model, client_id=self.client_id, rnd=rnd, broadcast=broadcast, state=state,
            trainer=trainer,
        )
        seconds = time.perf_counter() - start
        raw = wire.encoded_size(update)  # the same update without the up codec
        if self.codecs.up.active:
            # Delta against a fresh decode: hooks may have modified the broadcast they were given
            update.params = self.codecs.up.encode(update.params, self._broadcast(payload).params, state)
        data = wire.encode(update)
        loss = float(update.metrics.get("loss", float("nan")))
        progress.client_end(self.client_id, loss)
        record = {"round": rnd, "site": self.client_id, "kind": "train", "loss": loss, "n": update.num_examples,
                  Field.BYTES_UP: len(data), Field.BYTES_DOWN: len(payload), Field.BYTES_UP_RAW: raw, "seconds": seconds}
        return data, record

    def personalize(
        self, rnd: int, payload: bytes, state: ClientState, progress: ProgressSink | None = None
    ) -> dict[str, Any]:
        """The algorithm's post-federation local phase; returns a record."""
        progress = progress or ProgressSink()
        broadcast, trainer = self._prepare(rnd, payload, state, progress)
        progress.client_start(self.client_id, self.cfg.federation.local_epochs)
        metrics = run_client_personalization(
            self.algorithm, self.model, client_id=self.client_id, rnd=rnd, broadcast=broadcast, state=state,
            trainer=trainer,
        )
        return {"round": rnd - 1, "site": self.client_id, "kind": "personalize", **metrics}

    def evaluate(self, rnd: int, payload: bytes, state: ClientState, split: str) -> list[dict[str, Any]]:
        """Metrics of the global model (if the method has one) and of this client's personalised
        model on its own ``split``; one record each (personal = global when nothing is local)."""
        data = self.splits.get(split)
        if data is None or len(data) == 0:
            return []
        broadcast = self._broadcast(payload)
        base = {"round": rnd, "site": self.client_id, "kind": "eval", "split": split}
        records: list[dict[str, Any]] = []
        global_params = {**self.init_params, **broadcast.params}
        global_metrics = None
        if self.algorithm.has_global_model:
            global_metrics = self._evaluate(global_params, data)
            records.append({**base, "model": "global", **global_metrics})
        if self.cfg.eval.personalized and not self.algorithm.pooled_data:
            personal = self.algorithm.personal_params(global_params, state)
            if personal is not None:
                records.append({**base, "model": "personal", **self._evaluate(personal, data)})
            elif global_metrics is not None:
                records.append({**base, "model": "personal", **global_metrics})
        return records

    def _evaluate(self, params: Params, data: SegmentationSet) -> dict[str, float]:
        self.model.load_state_dict(params)
        return evaluate(self.model, data, num_classes=self.num_classes, device=self.device,
                        batch_size=self.cfg.eval.batch_size, window=sliding_window_for(self.cfg))
