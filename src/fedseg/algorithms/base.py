"""The algorithm interface: one federated method = one subclass, client and server halves together.

The base class *is* FedAvg. A method overrides only the hooks it changes. The engines (in-process
and Flower) call the hooks in this order for every sampled client in round ``t``::

    server:  bc = alg.broadcast(t, global_params, server_state)           # -> every sampled client
    client:  alg.on_round_start(model, ctx)                                # load bc.params + local keys
             metrics = alg.local_train(model, ctx, trainer)               # default: trainer.fit(...)
                 (trainer.fit calls alg.on_epoch_start / on_epoch_end around every local epoch and
                  alg.extra_loss(model, batch, logits, ctx) every step, with batch.aux holding the
                  outputs named by alg.aux_outputs(model))
             update = alg.client_update(model, ctx, metrics)               # -> server
             alg.on_round_end(model, ctx)                                  # stash local keys in state
    server:  agg = alg.aggregate(t, updates, global_params, server_state)  # -> Aggregate
                 (default: weights from alg.aggregation_weights(updates, global_params, server_state),
                  tensors from alg.combine(params, weights, global_params): the config's rule)

What each family overrides:

* shared vs local vs frozen parameters: :meth:`local_keys` (FedBN: norm layers by module type;
  FedPer/FedRep: the head by explicit module names; local-only: everything) never leave the client;
  :meth:`frozen_keys` (a pretrained encoder) are never trained, sent, or stored in client state or
  checkpoints: every client rebuilds them from the initial model. The engine checks every
  :class:`~fedseg.types.ClientUpdate` for both.
* extra client loss terms (proximal, distillation, prototype, boundary): :meth:`extra_loss`, with
  intermediate outputs from :meth:`aux_outputs` in ``batch.aux`` (no hand-made forward hooks).
* per-epoch work inside local training (prototypes of the last local epoch only):
  :meth:`on_epoch_start` / :meth:`on_epoch_end`, without restarting the optimizer.
* tensors besides weights: ``ClientUpdate.extras`` / ``Broadcast.extras`` (prototypes, key/value
  banks, aggregation weights, a second global model under a key prefix) and scalar
  ``ClientUpdate.metrics`` (training loss, local validation scores).
* per-client persistent state: ``ctx.state`` (personal parameters, optimizer state, codec residuals,
  a personal model as in Ditto); per-round scratch: ``ctx.scratch``; server state: ``server_state``.
* aggregation with arbitrary weights: :meth:`aggregation_weights` (it sees the global parameters)
  or the whole :meth:`aggregate`; both return what they want logged (:class:`Aggregate`), never
  through server state.
* a custom local procedure (FedRep's head-then-body, Ditto's two models, FedMix's two nets):
  :meth:`local_train`, using the engine's :class:`LocalTrainer` (which also evaluates on the
  client's own validation split, e.g. for FedSegNet's adaptive aggregation weights).
* a local phase after the last round (FedOAP's local fine-tuning): :meth:`personalize`.

Hyperparameters are dataclass fields; state lives in ``ctx.state``/``server_state``, never on
``self`` (Flower rebuilds the client for every message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from fedseg.algorithms.params import module_keys, norm_layer_keys, shared_params, weighted_average
from fedseg.algorithms.robust import Combiner
from fedseg.algorithms.training import (
    Batch,
    BatchLoss,
    ClientContext,
    EpochHook,
    ExtraLoss,
    LocalTrainer,
    StateKey,
)
from fedseg.records import Field, ModelKind, Selection
from fedseg.types import Broadcast, ClientState, ClientUpdate, Params, Scalar, ServerState

__all__ = [
    "Aggregate",
    "Algorithm",
    "Combiner",
    "Batch",
    "ClientContext",
    "LocalTrainer",
    "ExtraLoss",
    "BatchLoss",
    "EpochHook",
    "StateKey",
    "Weighting",
    "weight_rows",
    "shared_params",
    "weighted_average",
    "norm_layer_keys",
    "module_keys",
]


@dataclass
class Weighting:
    """What :meth:`Algorithm.aggregation_weights` returns.

    Attributes:
        weights: one per update, in the order given (need not sum to 1; the average normalises).
        factors: optionally one dict per update of the scalars the weight was computed from
            (AAM's Dice, divergence...), logged beside it.
    """

    weights: list[float]
    factors: list[dict[str, float]] = field(default_factory=list)


def weight_rows(updates: Sequence[ClientUpdate], weighting: Weighting) -> dict[str, dict[str, float]]:
    """``{client: {"weight": w_k / sum_j w_j, "n": n_k, **factors_k}}``: the ``kind: weights`` rows."""
    total = sum(weighting.weights)
    factors = weighting.factors or [{} for _ in updates]
    return {
        u.client_id: {Field.WEIGHT.value: w / total if total else 0.0, Field.N.value: float(u.num_examples), **f}
        for u, w, f in zip(updates, weighting.weights, factors, strict=True)
    }


@dataclass
class Aggregate:
    """What :meth:`Algorithm.aggregate` returns: the new global parameters and server state, and
    the round's metrics, which the engine writes to ``metrics.jsonl`` (never left in server state).

    Attributes:
        params: the new global parameters.
        server_state: the server state for the next round (checkpointed with the parameters).
        weights: per client, its normalised aggregation ``weight`` and any factors
            (:func:`weight_rows`): ``kind: weights`` lines, one per client.
        metrics: other round metrics by site (``fedseg.records.SERVER`` or a client id), e.g.
            cluster counts: ``kind: aggregate`` lines, one per site.
    """

    params: Params
    server_state: ServerState
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Scalar]] = field(default_factory=dict)


@dataclass
class Algorithm:
    """FedAvg (McMahan et al., 2017): ``w^{t+1} = sum_k (n_k / N) w_k^t``; nothing stays local.

    Subclasses override the hooks they change. Class attributes describe the method to engines:
    ``pooled_data`` (the engine trains one client on all sites' pooled training data: the
    centralised reference, in-process only), ``has_global_model`` (False for local-only) and
    ``weak_supervision`` (the method can train on box/image-supervised sites).
    """

    name: ClassVar[str] = "fedavg"
    description: ClassVar[str] = "FedAvg: weighted average of all parameters by sample count"
    pooled_data: ClassVar[bool] = False
    has_global_model: ClassVar[bool] = True
    weak_supervision: ClassVar[bool] = False
    """True: the method trains on box/image-supervised sites (no pixel masks), e.g. FedMix."""
    judged_by: ClassVar[str] = ModelKind.GLOBAL
    """The model this method is judged by on a site that trained: ``global`` (the aggregated model) or
    ``personal`` (the client's own model, for methods that keep local state)."""
    unseen_policy: ClassVar[str] = "the global model"
    """What the method uses on a site that never trained (one line, shown in reports)."""
    message_extras: ClassVar[frozenset[str]] = frozenset()
    """Extras keys the method sends (either direction); an entry ending in ``.`` is a prefix. The
    server refuses an update with any other extras key (:func:`fedseg.types.check_extras`)."""
    optimizer_state: ClassVar[str] = "reset"
    """The optimizer policy ``train.optimizer_state: auto`` resolves to: ``reset`` (a fresh optimizer
    every round, as most FL baselines) or ``persist`` (ordinary training: local-only, centralized)."""

    combine: Combiner = field(default_factory=Combiner, init=False, repr=False, compare=False)
    """How :meth:`aggregate` turns the updates' tensors into global ones, ``combine(updates, weights,
    reference)``: every algorithm's aggregation goes through it. Default: the weighted average; the
    builder sets it from the ``aggregation`` config section (robust rules, clipping;
    :mod:`fedseg.algorithms.robust`). Not a hyperparameter: configured once per run, never state."""

    def resolved_optimizer_state(self, configured: str) -> str:
        """``train.optimizer_state`` with ``auto`` replaced by this method's own policy."""
        return self.optimizer_state if configured == "auto" else configured

    # ------------------------------------------------------------------ client side
    def local_keys(self, model: nn.Module) -> set[str]:
        """State-dict keys that never leave the client."""
        return set()

    def frozen_keys(self, model: nn.Module) -> set[str]:
        """State-dict keys that are never trained, sent or stored (a pretrained encoder).

        The engine turns ``requires_grad`` off for them during every client round (so no
        optimizer sees them), refuses an update or client state that carries one, and keeps them
        out of the global parameters and every checkpoint: each process rebuilds them from the
        initial model (the seeded init or ``model.init_checkpoint``). Frozen wins over local: a
        key in both is frozen. Buffers among them (running statistics) are not optimised either,
        but a module in training mode still updates them within a round; they are reset from the
        initial model every round.
        """
        return set()

    def aux_outputs(self, model: nn.Module) -> Mapping[str, str]:
        """Intermediate outputs the losses need, ``{name: exact named_modules path}`` (default: none).

        The trainer captures them in every training forward pass of the default
        :meth:`local_train` and hands them to :meth:`extra_loss` as ``batch.aux[name]`` (with
        gradients); it installs and removes the hooks itself. A model may offer names for its
        useful outputs (``fedseg.models.taps.offered_outputs``). Evaluation never captures them.
        """
        return {}

    def on_epoch_start(self, model: nn.Module, ctx: ClientContext, epoch: int, epochs: int) -> None:
        """Called by the default :meth:`local_train` before local epoch ``epoch`` (1-based) of ``epochs``."""

    def on_epoch_end(self, model: nn.Module, ctx: ClientContext, epoch: int, epochs: int) -> None:
        """Called by the default :meth:`local_train` after local epoch ``epoch`` (1-based) of ``epochs``
        (the optimizer carries on into the next epoch)."""

    def on_round_start(self, model: nn.Module, ctx: ClientContext) -> None:
        """Load the broadcast parameters, then the client's own local parameters."""
        model.load_state_dict(ctx.broadcast.params, strict=False)
        local = ctx.state.get(StateKey.LOCAL_PARAMS)
        if local:
            model.load_state_dict(local, strict=False)

    def local_train(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        """Default: the configured local epochs with :meth:`extra_loss` added to the task loss, the
        outputs of :meth:`aux_outputs` in ``batch.aux`` and the per-epoch hooks."""

        def extra(m: nn.Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
            return self.extra_loss(m, batch, logits, ctx)

        return trainer.fit(
            model,
            extra_loss=extra,
            aux_outputs=self.aux_outputs(model),
            on_epoch_start=lambda m, epoch, epochs: self.on_epoch_start(m, ctx, epoch, epochs),
            on_epoch_end=lambda m, epoch, epochs: self.on_epoch_end(m, ctx, epoch, epochs),
        )

    def extra_loss(
        self, model: nn.Module, batch: Batch, logits: torch.Tensor, ctx: ClientContext
    ) -> torch.Tensor | None:
        """An extra term added to the task loss (None: nothing); ``batch.aux`` holds the
        :meth:`aux_outputs` of this step's forward pass."""
        return None

    def client_update(
        self, model: nn.Module, ctx: ClientContext, num_examples: int, train_metrics: Mapping[str, float]
    ) -> ClientUpdate:
        """The message to the server: shared parameters (neither local nor frozen), n_k and training metrics."""
        return ClientUpdate(
            client_id=ctx.client_id,
            params=shared_params(model, self.local_keys(model) | self.frozen_keys(model)),
            num_examples=num_examples,
            metrics={k: float(v) for k, v in train_metrics.items()},
        )

    def personalize(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float] | None:
        """Optional local phase after the last round (e.g. FedOAP's local fine-tuning).

        The engine calls it once per client, with the final global model and the client's local
        keys loaded, and then :meth:`on_round_end`. The base class does nothing (and the engine
        skips the call entirely unless a subclass overrides it).
        """
        return None

    def on_round_end(self, model: nn.Module, ctx: ClientContext) -> None:
        """Keep the local (not frozen) parameters in client state for the next round and for evaluation."""
        local = self.local_keys(model) - self.frozen_keys(model)
        if local:
            sd = model.state_dict()
            ctx.state[StateKey.LOCAL_PARAMS] = {k: sd[k].detach().to("cpu", copy=True) for k in local}

    def personal_params(self, global_params: Params, state: ClientState) -> Params | None:
        """The client's personalised model for evaluation, or None when it equals the global one."""
        local = state.get(StateKey.LOCAL_PARAMS)
        if not local:
            return None
        return {**global_params, **local}

    # ------------------------------------------------------------------ server side
    def init_server_state(self, params: Params) -> ServerState:
        """Server state before round 1."""
        return {}

    def round_config(self, rnd: int, server_state: ServerState) -> dict[str, Scalar]:
        """Scalars sent to the clients with the round's broadcast."""
        return {"round": rnd}

    def broadcast(self, rnd: int, global_params: Params, server_state: ServerState) -> Broadcast:
        """The server -> client message of round ``rnd``."""
        return Broadcast(params=global_params, config=self.round_config(rnd, server_state))

    def aggregation_weights(
        self, updates: Sequence[ClientUpdate], global_params: Params, server_state: ServerState
    ) -> Weighting:
        """One weight per update (need not sum to 1), given the global parameters the clients
        started from: default ``n_k``."""
        return Weighting([float(u.num_examples) for u in updates])

    def aggregate(
        self, rnd: int, updates: Sequence[ClientUpdate], global_params: Params, server_state: ServerState
    ) -> Aggregate:
        """New global parameters: the updates combined by :attr:`combine` (default: their weighted
        average), over the keys they carry; the weights (normalised, with their factors) are
        returned for the round's log."""
        ordered = sorted(updates, key=lambda u: u.client_id)
        shared = [u for u in ordered if u.params]
        if not shared:
            return Aggregate(global_params, server_state)
        weighting = self.aggregation_weights(shared, global_params, server_state)
        averaged = self.combine([u.params for u in shared], weighting.weights, global_params)
        return Aggregate({**global_params, **averaged}, server_state, weights=weight_rows(shared, weighting))

    # ---- evaluation side
    def prepare_eval_model(self, model: nn.Module, extras: Mapping[str, torch.Tensor], state: ClientState) -> None:
        """Make ``model`` ready for evaluation once its parameters are loaded.

        Every evaluation path calls it (in-run evaluation, ``fedseg eval``, ``fedseg predict``,
        Flower), with the extras of the broadcast the evaluated model came from and the state of
        the client that evaluates (``{}`` where none is held, e.g. a new site). Non-parameter
        state the server sends, such as a key/value bank, goes into the model here. Default:
        nothing.
        """

    def personal_model(self, global_params: Params, state: ClientState, selection: str = Selection.LAST
                       ) -> Params | None:
        """The client's personalised model under ``selection``: with ``best_val`` the snapshot the
        engine kept at the client's best validation round (:attr:`StateKey.BEST_VAL`), otherwise
        (or when there is none) :meth:`personal_params` of ``global_params``. None: the method has
        no personalised model besides the global one."""
        best = state.get(StateKey.BEST_VAL) if selection == Selection.BEST_VAL else None
        if best is not None:  # the snapshot holds no frozen keys: they come with global_params
            params: Params = {**global_params, **best["params"]}
            return params
        return self.personal_params(global_params, state)

    def unseen_params(self, global_params: Params, client_states: Mapping[str, ClientState],
                      num_examples: Mapping[str, int], selection: str = Selection.LAST) -> Params | None:
        """The model used on a site that never trained (:attr:`unseen_policy`), from the (selected)
        global model and the trained clients' states and sample counts; ``selection`` says which
        personalised models to combine (:meth:`personal_model`). The server calls it at the end of
        a run where it holds the states and stores it in the checkpoint. None: the method has none.
        Default: the global model."""
        return global_params if self.has_global_model else None
