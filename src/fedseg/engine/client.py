"""The client side, shared by every engine: the hook sequence of a round and :class:`ClientRuntime`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from fedseg.algorithms.base import Algorithm, ClientContext, LocalTrainer, StateKey
from fedseg.codecs import build_wire_codecs
from fedseg.config import ConfigError, RunConfig
from fedseg.data.base import SegmentationSet
from fedseg.engine import wire
from fedseg.engine.attack import update_attack
from fedseg.engine.dpsgd import check_sample_dp, privacy_record
from fedseg.engine.evaluate import evaluate, improves, load_eval_model, sliding_window_for
from fedseg.engine.frozen import FrozenKeyError, check_frozen, frozen_parameters
from fedseg.engine.messages import decode_broadcast
from fedseg.engine.privacy import clip_update
from fedseg.engine.progress import ProgressSink
from fedseg.engine.schedule import RoundPosition
from fedseg.engine.seeding import derive_seed, seed_everything
from fedseg.engine.trainer import Trainer
from fedseg.records import Field, Kind, ModelKind, Selection, Split
from fedseg.types import Broadcast, ClientState, ClientUpdate, Params

__all__ = [
    "ClientRuntime",
    "run_client_round",
    "run_client_personalization",
    "overrides_personalize",
    "PrivacyError",
    "FrozenKeyError",
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

    ``state`` is updated in place (the caller persists it). The algorithm's frozen keys have
    ``requires_grad`` off for the whole round.

    Raises:
        PrivacyError: the update carries one of the algorithm's local keys.
        FrozenKeyError: the update or the client state carries one of its frozen keys.
    """
    ctx = ClientContext(client_id=client_id, round=rnd, broadcast=broadcast, state=state, device=trainer.device)
    frozen = algorithm.frozen_keys(model)
    with frozen_parameters(model, frozen):
        algorithm.on_round_start(model, ctx)
        metrics = algorithm.local_train(model, ctx, trainer)
        update = algorithm.client_update(model, ctx, trainer.num_examples, metrics)
        algorithm.on_round_end(model, ctx)
    check_frozen(algorithm, frozen, update, state)
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
    frozen = algorithm.frozen_keys(model)
    with frozen_parameters(model, frozen):
        algorithm.on_round_start(model, ctx)
        metrics = algorithm.personalize(model, ctx, trainer) or {}
        algorithm.on_round_end(model, ctx)
    check_frozen(algorithm, frozen, None, state)
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
        self.attack = update_attack(cfg.attack, client_id, seed=cfg.seed, client_index=client_index)
        train = self.splits.get("train")
        self.trains = cfg.federation.train_sites is None or client_id in cfg.federation.train_sites
        """Whether this client trains (``federation.train_sites``); one that never does has no
        personalised model and is scored with the method's unseen model."""
        if train is not None and not train.has_masks and self.trains and not algorithm.weak_supervision:
            raise ConfigError(
                f"site {client_id} is {train.supervision}-supervised (data.supervision); algorithm {algorithm.name} "
                "needs pixel masks; use fedmix or leave the site out of training with federation.train_sites"
            )
        check_sample_dp(cfg, algorithm, model)  # DP-SGD: the algorithm's hooks and the model's layers

    def _broadcast(self, payload: bytes) -> Broadcast:
        """Decode the server's payload (wire format, then the down codec against the model's init)."""
        return decode_broadcast(payload, self.codecs.down, self.init_params, self.client_id)

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
            eval_sets={k: v for k, v in self.splits.items() if k == "val" and train.has_masks},
            num_classes=self.num_classes,
            eval_batch_size=self.cfg.eval.batch_size,
            window=sliding_window_for(self.cfg),
            dp=self.cfg.privacy.sample,
        )
        trainer.position = RoundPosition(rnd, self.cfg.federation.rounds)  # train.lr_schedule
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
        dp = self.cfg.privacy.client
        norm = clip_update(update.params, self._broadcast(payload).params, dp.clipping_norm) if dp.enabled else None
        if self.attack is not None:  # a simulated hostile site (the attack section; benchmarks only)
            update = self.attack.apply(update, self._broadcast(payload), rnd)
        if self.codecs.up.active:
            raw = wire.encoded_size(update)  # the same update without the up codec
            # Delta against a fresh decode: hooks may have modified the broadcast they were given
            update.params = self.codecs.up.encode(update.params, self._broadcast(payload).params, state)
            data = wire.encode(update)
        else:
            data = wire.encode(update)
            raw = len(data)  # = wire.encoded_size(update), without checking and sizing the update twice
        loss = float(update.metrics.get("loss", float("nan")))
        progress.client_end(self.client_id, loss)
        record: dict[str, Any] = {
            Field.ROUND: rnd, Field.SITE: self.client_id, Field.KIND: Kind.TRAIN, Field.LOSS: loss,
            Field.N: update.num_examples, Field.BYTES_UP: len(data), Field.BYTES_DOWN: len(payload),
            Field.BYTES_UP_RAW: raw, Field.SECONDS: seconds, **privacy_record(state),
            **({Field.UPDATE_NORM: norm} if norm is not None else {}),
        }
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
        # the post-federation phase's model is the one tested: a best-validation snapshot from the
        # federated rounds would otherwise replace it
        state.pop(StateKey.BEST_VAL, None)
        return {Field.ROUND: rnd - 1, Field.SITE: self.client_id, Field.KIND: Kind.PERSONALIZE, **metrics}

    def evaluate(self, rnd: int, payload: bytes, state: ClientState, split: str) -> list[dict[str, Any]]:
        """Metrics on this client's own ``split`` of every model it is scored with, one record each
        (``model``: global, personal, or unseen when the broadcast says so).

        * global: the decoded broadcast (methods with a global model);
        * personal (a site that trains, ``eval.personalized``): the algorithm's personalised model
          (:meth:`~fedseg.algorithms.base.Algorithm.personal_model`; the global one's figures when
          it has none); under ``selection: best_val`` the snapshot of its best validation round;
        * unseen: the broadcast is the model for a site that never trained.

        A validation pass also updates the client's selection state in place (its latest and, with
        ``eval.select: best_val``, its best personalised model): the caller saves the state after a
        ``val`` evaluation. Test records carry ``selection`` and ``selected_round``.
        """
        data = self.splits.get(split)
        if data is None or len(data) == 0:
            return []
        broadcast = self._broadcast(payload)
        config = broadcast.config
        base: dict[str, Any] = {Field.ROUND: rnd, Field.SITE: self.client_id, Field.KIND: Kind.EVAL, Field.SPLIT: split}
        selection = config.get(Field.SELECTION)
        chosen = int(config.get(Field.SELECTED_ROUND, rnd))
        if selection is not None:
            base[Field.SELECTION] = str(selection)
        global_params = {**self.init_params, **broadcast.params}
        if config.get(Field.MODEL) == ModelKind.UNSEEN:
            metrics = self._evaluate(global_params, data, broadcast.extras, state)
            return self._plain([{**base, Field.MODEL: ModelKind.UNSEEN, **self._chosen(selection, chosen), **metrics}])
        records: list[dict[str, Any]] = []
        global_metrics = None
        if self.algorithm.has_global_model:
            global_metrics = self._evaluate(global_params, data, broadcast.extras, state)
            records.append({**base, Field.MODEL: ModelKind.GLOBAL, **self._chosen(selection, chosen), **global_metrics})
        if not (self.cfg.eval.personalized and self.trains and not self.algorithm.pooled_data):
            return self._plain(records)
        personal = self.algorithm.personal_model(global_params, state, str(selection or Selection.LAST))
        if personal is not None:
            metrics = self._evaluate(personal, data, broadcast.extras, state)
            best = state.get(StateKey.BEST_VAL) if selection == Selection.BEST_VAL else None
            personal_round = int(best[Field.ROUND]) if best is not None else rnd
        elif global_metrics is not None:
            metrics, personal_round = global_metrics, chosen
        else:
            return self._plain(records)
        records.append({**base, Field.MODEL: ModelKind.PERSONAL, **self._chosen(selection, personal_round), **metrics})
        if split == Split.VAL and selection is None and personal is not None:
            self._track(rnd, float(metrics.get(Field.DICE, float("nan"))), personal, state)
        return self._plain(records)

    @staticmethod
    def _plain(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records with plain ``str`` keys and values (not enum members), for every transport."""
        return [{str(k): (str(v) if isinstance(v, StrEnum) else v) for k, v in r.items()} for r in records]

    @staticmethod
    def _chosen(selection: Any, selected_round: int) -> dict[str, Any]:
        return {} if selection is None else {Field.SELECTED_ROUND: selected_round}

    def _track(self, rnd: int, dice: float, personal: Params, state: ClientState) -> None:
        """Keep the personalised model's latest validation score and, with ``eval.select:
        best_val``, a snapshot of it when it beats the client's best (its own validation Dice)."""
        state[StateKey.LAST_VAL] = {Field.ROUND.value: rnd, Field.DICE.value: dice}
        if self.cfg.eval.select != Selection.BEST_VAL.value:
            return
        best = state.get(StateKey.BEST_VAL)
        if improves(dice, None if best is None else float(best[Field.DICE])):
            frozen = self.algorithm.frozen_keys(self.model)  # never stored per client (rebuilt from the init)
            state[StateKey.BEST_VAL] = {Field.ROUND.value: rnd, Field.DICE.value: dice,
                                        "params": {k: v.detach().to("cpu", copy=True) for k, v in personal.items()
                                                   if k not in frozen}}

    def _evaluate(self, params: Params, data: SegmentationSet, extras: Mapping[str, torch.Tensor],
                  state: ClientState) -> dict[str, float]:
        load_eval_model(self.algorithm, self.model, params, extras, state)
        return evaluate(self.model, data, num_classes=self.num_classes, device=self.device,
                        batch_size=self.cfg.eval.batch_size, window=sliding_window_for(self.cfg))
