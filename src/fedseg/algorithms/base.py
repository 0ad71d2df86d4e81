"""The algorithm interface: one federated method = one subclass, client and server halves together.

The base class *is* FedAvg. A method overrides only the hooks it changes. The engines (in-process
and Flower) call the hooks in this order for every sampled client in round ``t``::

    server:  bc = alg.broadcast(t, global_params, server_state)           # -> every sampled client
    client:  alg.on_round_start(model, ctx)                                # load bc.params + local keys
             metrics = alg.local_train(model, ctx, trainer)               # default: trainer.fit(...)
                 (trainer.fit calls alg.extra_loss(model, batch, logits, ctx) every step)
             update = alg.client_update(model, ctx, metrics)               # -> server
             alg.on_round_end(model, ctx)                                  # stash local keys in state
    server:  global_params, server_state = alg.aggregate(t, updates, global_params, server_state)

What each family overrides:

* shared vs local parameters: :meth:`local_keys` (FedBN: norm layers by module type; FedPer/FedRep:
  the head by explicit module names; local-only: everything). Local keys never enter a message:
  the engine checks every :class:`~fedseg.types.ClientUpdate`.
* extra client loss terms (proximal, distillation, prototype, boundary): :meth:`extra_loss`.
* tensors besides weights: ``ClientUpdate.extras`` / ``Broadcast.extras`` (prototypes, key/value
  banks, aggregation weights, a second global model under a key prefix) and scalar
  ``ClientUpdate.metrics`` (training loss, local validation scores).
* per-client persistent state: ``ctx.state`` (personal parameters, optimizer state, codec residuals,
  a personal model as in Ditto); per-round scratch: ``ctx.scratch``; server state: ``server_state``.
* aggregation with arbitrary weights: :meth:`aggregation_weights` or the whole :meth:`aggregate`.
* a custom local procedure (FedRep's head-then-body, Ditto's two models, FedMix's two nets):
  :meth:`local_train`, using the engine's :class:`LocalTrainer` (which also evaluates on the
  client's own validation split, e.g. for FedSegNet's adaptive aggregation weights).
* a local phase after the last round (FedOAP's local fine-tuning): :meth:`personalize`.

Hyperparameters are dataclass fields; state lives in ``ctx.state``/``server_state``, never on
``self`` (Flower rebuilds the client for every message).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from fedseg.data.base import MissingMaskError
from fedseg.records import ModelKind, Selection
from fedseg.types import Broadcast, ClientState, ClientUpdate, Params, Scalar, ServerState

__all__ = [
    "Algorithm",
    "Batch",
    "ClientContext",
    "LocalTrainer",
    "ExtraLoss",
    "BatchLoss",
    "StateKey",
    "shared_params",
    "weighted_average",
    "norm_layer_keys",
    "module_keys",
]


class Batch:
    """One training batch on the training device.

    Attributes:
        image: ``(B, C, *spatial)`` float32.
        mask: ``(B, 1, *spatial)`` int64 class indices. A batch of a weakly-supervised site has
            none: reading ``mask`` then raises :class:`~fedseg.data.base.MissingMaskError`
            (check :attr:`has_mask`), so no code path can train on a mask that is not there.
        extras: other per-sample tensors, first dimension B (weak labels: ``box_mask``,
            ``image_label``, the ``supervision`` code; see :mod:`fedseg.data.supervision`).
    """

    __slots__ = ("image", "_mask", "extras")

    def __init__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None, extras: dict[str, torch.Tensor] | None = None
    ) -> None:
        self.image = image
        self._mask = mask
        self.extras: dict[str, torch.Tensor] = {} if extras is None else extras

    @property
    def has_mask(self) -> bool:
        """Whether the batch carries pixel masks."""
        return self._mask is not None

    @property
    def mask(self) -> torch.Tensor:
        if self._mask is None:
            raise MissingMaskError(
                "this training batch comes from a weakly-supervised site (data.supervision) and carries no pixel "
                "mask; an algorithm that needs pixel masks cannot train on it (use fedmix, or leave the site out "
                "with federation.train_sites)"
            )
        return self._mask

    def __repr__(self) -> str:
        mask = None if self._mask is None else tuple(self._mask.shape)
        return f"Batch(image={tuple(self.image.shape)}, mask={mask}, extras={sorted(self.extras)})"


ExtraLoss = Callable[[nn.Module, Batch, torch.Tensor], "torch.Tensor | None"]
"""``(model, batch, logits) -> extra loss or None``, added to the task loss each step."""

BatchLoss = Callable[[nn.Module, Batch, torch.Tensor], torch.Tensor]
"""``(model, batch, logits) -> loss``: replaces the task loss (e.g. a loss on pseudo-labels)."""


class LocalTrainer(Protocol):
    """What the engine offers an algorithm for local training (implemented in ``fedseg.engine``)."""

    num_examples: int
    epochs: int
    device: torch.device
    supervision: str
    """Label kind of the training split: ``"pixel"``, ``"box"`` or ``"image"`` (data.supervision)."""

    def fit(
        self,
        model: nn.Module,
        *,
        epochs: int | None = None,
        extra_loss: ExtraLoss | None = None,
        trainable: set[str] | None = None,
        optimizer_key: str = "optimizer",
        loss: BatchLoss | None = None,
        extras: Mapping[str, torch.Tensor] | None = None,
        subset: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Train ``model`` for ``epochs`` (default: the configured local epochs).

        Args:
            trainable: parameter names to optimise (default: all); others are frozen for the call.
            optimizer_key: where the optimizer state lives in client state when it persists
                across rounds, so a second model (Ditto, FedMix) keeps a separate optimizer.
            loss: replaces the task loss (which needs pixel masks); ``extra_loss`` is still added.
            extras: per-sample tensors of the training split (first dimension ``num_examples``,
                e.g. pseudo-labels), added to every batch's ``extras`` for its samples.
            subset: indices of the training samples to use (default: all), e.g. selected
                pseudo-labels; epochs then run over the subset only.

        Returns:
            ``{"loss": mean total loss, "task_loss": mean task loss, "steps": n}``.
        """
        ...

    def batches(self, *, shuffle: bool = False) -> Iterator[Batch]:
        """One pass over the client's training data (for prototypes, banks, statistics), never
        augmented; unshuffled batches follow the split's order. Each batch's ``extras`` holds
        the samples' weak labels and ``index`` (their positions in the split)."""
        ...

    def task_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The configured segmentation loss (Dice + CE)."""
        ...

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Metrics of ``model`` on the client's own ``split`` (val by default): Dice, IoU, HD95
        (mm), precision, recall and ``n`` -- for aggregation weights such as FedSegNet's AAM."""
        ...


class StateKey:
    """Keys the base class uses in client state."""

    LOCAL_PARAMS = "local_params"
    BEST_VAL = "best_val"  # engine: personal model at the best val round {"round", "dice", "params"}
    LAST_VAL = "last_val"  # engine: the personal model's latest val score {"round", "dice"}


@dataclass
class ClientContext:
    """Everything a client hook may read or write in one round.

    Attributes:
        client_id: the site name.
        round: the round number (1-based).
        broadcast: the server's message for this round.
        state: persistent per-client state (CPU tensors; saved by the engine after the round).
        scratch: per-round transient storage (device tensors allowed; discarded after the round).
        device: the training device.
    """

    client_id: str
    round: int
    broadcast: Broadcast
    state: ClientState
    device: torch.device
    scratch: dict[str, Any] = field(default_factory=dict)


def norm_layer_keys(model: nn.Module) -> set[str]:
    """State-dict keys (affine parameters and running statistics) of every normalisation layer,
    selected by module type, never by name."""
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    keys: set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, norm_types):
            prefix = f"{mod_name}." if mod_name else ""
            keys.update(prefix + k for k in module.state_dict(keep_vars=True))
    return keys


def module_keys(model: nn.Module, module_names: Sequence[str]) -> set[str]:
    """State-dict keys of the named submodules (exact ``named_modules`` names, not substrings)."""
    modules = dict(model.named_modules())
    keys: set[str] = set()
    for name in module_names:
        if name not in modules:
            from fedseg.registry import suggest

            raise KeyError(
                f"module {name!r} not found in the model; modules with parameters include "
                f"{', '.join(n for n, m in list(modules.items())[-6:] if n)}.{suggest(name, list(modules))}"
            )
        prefix = f"{name}." if name else ""
        keys.update(prefix + k for k in modules[name].state_dict(keep_vars=True))
    return keys


def shared_params(model: nn.Module, local: set[str]) -> Params:
    """CPU copies of every state-dict entry that is not local."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k not in local}


def weighted_average(updates: Sequence[Params], weights: Sequence[float]) -> Params:
    """``sum_k w_k * params_k / sum_k w_k``, key by key, accumulated in float64.

    Floating tensors are averaged; integer buffers (e.g. ``num_batches_tracked``) take the
    maximum. Callers sort updates by client id first so that the result is bit-identical for any
    arrival order. Keys missing from some updates are averaged over the updates that have them.
    """
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    out: Params = {}
    keys: list[str] = []
    seen: set[str] = set()
    for p in updates:
        for k in p:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    for key in keys:
        items = [(p[key], float(w)) for p, w in zip(updates, weights, strict=True) if key in p]
        first = items[0][0]
        if first.is_floating_point():
            total = sum(w for _, w in items)
            if total <= 0:
                raise ValueError(f"aggregation weights for {key!r} sum to {total}; they must be positive")
            acc = torch.zeros(first.shape, dtype=torch.float64)
            for tensor, w in items:
                acc += tensor.to(torch.float64) * (w / total)
            out[key] = acc.to(first.dtype)
        else:
            out[key] = torch.stack([t for t, _ in items]).amax(dim=0)
    return out


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
    optimizer_state: ClassVar[str] = "reset"
    """The optimizer policy ``train.optimizer_state: auto`` resolves to: ``reset`` (a fresh optimizer
    every round, as most FL baselines) or ``persist`` (ordinary training: local-only, centralized)."""

    def resolved_optimizer_state(self, configured: str) -> str:
        """``train.optimizer_state`` with ``auto`` replaced by this method's own policy."""
        return self.optimizer_state if configured == "auto" else configured

    # ------------------------------------------------------------------ client side
    def local_keys(self, model: nn.Module) -> set[str]:
        """State-dict keys that never leave the client."""
        return set()

    def on_round_start(self, model: nn.Module, ctx: ClientContext) -> None:
        """Load the broadcast parameters, then the client's own local parameters."""
        model.load_state_dict(ctx.broadcast.params, strict=False)
        local = ctx.state.get(StateKey.LOCAL_PARAMS)
        if local:
            model.load_state_dict(local, strict=False)

    def local_train(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        """Default: the configured local epochs with :meth:`extra_loss` added to the task loss."""

        def extra(m: nn.Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
            return self.extra_loss(m, batch, logits, ctx)

        return trainer.fit(model, extra_loss=extra)

    def extra_loss(
        self, model: nn.Module, batch: Batch, logits: torch.Tensor, ctx: ClientContext
    ) -> torch.Tensor | None:
        """An extra term added to the task loss (None: nothing)."""
        return None

    def client_update(
        self, model: nn.Module, ctx: ClientContext, num_examples: int, train_metrics: Mapping[str, float]
    ) -> ClientUpdate:
        """The message to the server: shared parameters, n_k and training metrics."""
        return ClientUpdate(
            client_id=ctx.client_id,
            params=shared_params(model, self.local_keys(model)),
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
        """Keep the local parameters in client state for the next round and for evaluation."""
        local = self.local_keys(model)
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

    def aggregation_weights(self, updates: Sequence[ClientUpdate], server_state: ServerState) -> list[float]:
        """One weight per update (need not sum to 1): default ``n_k``."""
        return [float(u.num_examples) for u in updates]

    def aggregate(
        self, rnd: int, updates: Sequence[ClientUpdate], global_params: Params, server_state: ServerState
    ) -> tuple[Params, ServerState]:
        """New global parameters: the weighted average of the updates, over the keys they carry."""
        ordered = sorted(updates, key=lambda u: u.client_id)
        shared = [u for u in ordered if u.params]
        if not shared:
            return global_params, server_state
        weights = self.aggregation_weights(shared, server_state)
        averaged = weighted_average([u.params for u in shared], weights)
        server_state["last_weights"] = {u.client_id: float(w) for u, w in zip(shared, weights, strict=True)}
        return {**global_params, **averaged}, server_state

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
        if best is not None:
            params: Params = best["params"]
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
