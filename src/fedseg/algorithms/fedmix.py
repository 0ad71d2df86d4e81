"""FedMix (Wicaksana et al., IEEE TMI 2023; methods.md section 1): federated segmentation with mixed
supervision -- pixel masks, bounding boxes or image-level labels per site (``data.supervision``).

Two global networks G1 (the evaluated global model) and G2 (another random init) travel together;
weak sites train each on the other's refined, agreeing pseudo-labels; the server weighs clients by
data share plus ``lam`` times a normalised power of their training loss, with one weight vector
for both networks. Every choice methods.md leaves open is marked [ASSUME] and listed in
docs/decisions.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal

import torch
from monai.losses import DiceLoss
from torch import nn

from fedseg.algorithms.base import (Aggregate, Algorithm, Batch, BatchLoss, ClientContext, LocalTrainer, Weighting,
                                   weight_rows)
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.data.supervision import SupervisionKind, WeakKey
from fedseg.records import Field
from fedseg.types import Broadcast, ClientUpdate, Params, ServerState

__all__ = [
    "FedMix",
    "FedMixKey",
    "soft_dice_loss",
    "hard_dice",
    "threshold_probs",
    "refine",
    "select",
    "to_label_map",
    "cross_targets",
    "fedmix_weights",
    "second_init",
]


class FedMixKey(StrEnum):
    """Message, metric and state keys of FedMix."""

    NET2_PREFIX = "net2."  # Broadcast.extras / ClientUpdate.extras: G2 / the client's net 2
    NET2_STATE = "fedmix_net2"  # server state: G2's parameters
    NET2_OPTIMIZER = "net2_optimizer"  # client state: net 2's optimizer (net 1 uses "optimizer")
    LOSS = "fedmix_loss"  # metric and client state: l_k, the mean net-1 loss of the round
    SELECTED = "fedmix_selected"  # metric: pseudo-labelled samples kept this round
    SKIPPED = "fedmix_skipped"  # metric: 1.0 when a weak client kept no sample and did not train
    TARGET = "fedmix_target"  # batch extras: the pseudo-label a net trains on


def soft_dice_loss(eps: float = 1e-4) -> DiceLoss:
    """FedMix's loss ``1 - (2 sum(p y) + eps) / (sum p + sum y + eps)`` per sample and foreground
    class, averaged over the batch [CODE ``dice_loss.py``]; no CE. ``p`` is the softmax probability
    (our models output ``num_classes`` channels; binary: channel 1). MONAI ``DiceLoss`` with
    ``include_background=False``, one-hot targets and ``smooth_nr = smooth_dr = eps``."""
    return DiceLoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=eps, smooth_dr=eps,
                    batch=False)


def threshold_probs(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard pseudo-label ``1[softmax(logits)_c > threshold]`` per foreground class.

    Args:
        logits: ``(B, C, *spatial)`` raw outputs, ``C`` = classes including background.

    Returns:
        ``(B, C - 1, *spatial)`` bool, one channel per foreground class.
    """
    return torch.softmax(logits.float(), dim=1)[:, 1:] > threshold


def refine(
    p: torch.Tensor,
    *,
    box: torch.Tensor | None = None,
    present: torch.Tensor | None = None,
    single_class: bool = False,
) -> torch.Tensor:
    """Refine a pseudo-label with a weak label (methods.md 1(c)1).

    Args:
        p: ``(B, C-1, *spatial)`` bool pseudo-label.
        box: ``(B, 1, *spatial)`` box mask (1 inside): ``p * Bmask``.
        present: ``(B, C)`` image-level class vector (background first): channels of absent
            classes are zeroed (``p * Cmask``). With one foreground class nothing is refined, as in
            the authors' code, unless ``single_class`` is True ([ASSUME] switch).

    Returns:
        ``(B, C-1, *spatial)`` bool.
    """
    out = p
    if box is not None:
        out = out & (box > 0)
    if present is not None and (p.shape[1] > 1 or single_class):
        keep = present[:, 1:] > 0
        out = out & keep.reshape(*keep.shape, *([1] * (p.ndim - 2)))
    return out


def hard_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``(2 sum(a b) + eps) / (sum a + sum b + eps)`` per sample over all other axes (``(B,)``);
    two empty masks give 1."""
    a_f, b_f = a.flatten(1).float(), b.flatten(1).float()
    return (2 * (a_f * b_f).sum(1) + eps) / (a_f.sum(1) + b_f.sum(1) + eps)


def select(
    p1: torch.Tensor,
    p2: torch.Tensor,
    *,
    threshold: float = 0.9,
    box: torch.Tensor | None = None,
    box_threshold: float = 0.5,
    eps: float = 1e-4,
) -> torch.Tensor:
    """The selection rule (methods.md 1(c)2): keep sample i if ``Dice(p1_i, p2_i) >= threshold``
    and, for box sites, ``Dice(p1_i, Bmask_i) >= box_threshold`` (``p1``'s foreground classes
    together against the box).

    Args:
        p1, p2: ``(B, C-1, *spatial)`` refined pseudo-labels of net 1 and net 2.
        box: ``(B, 1, *spatial)`` box masks, or None.

    Returns:
        ``(B,)`` bool.
    """
    keep = hard_dice(p1, p2, eps) >= threshold
    if box is not None:
        keep &= hard_dice(p1.any(dim=1, keepdim=True), box > 0, eps) >= box_threshold
    return keep


def to_label_map(p: torch.Tensor) -> torch.Tensor:
    """``(B, C-1, *spatial)`` bool (disjoint: a softmax probability above 0.5 holds for one class at
    most) -> ``(B, 1, *spatial)`` uint8 class indices (0 = background)."""
    classes = torch.arange(1, p.shape[1] + 1, device=p.device, dtype=torch.uint8)
    return (p.to(torch.uint8) * classes.reshape(1, -1, *([1] * (p.ndim - 2)))).amax(dim=1, keepdim=True)


def cross_targets(t1: torch.Tensor, t2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross pseudo-supervision: ``(target of net 1, target of net 2) = (t2, t1)``, where ``tj`` is
    net j's refined pseudo-label."""
    return t2, t1


def fedmix_weights(
    n: Sequence[float], losses: Sequence[float], lam: float, beta: float
) -> tuple[list[float], list[dict[str, float]]]:
    """FedMix's aggregation weights (methods.md 1(d))::

        s_k = l_k^beta / sum_j l_j^beta,   d_k = n_k / sum_j n_j,   w_k = (d_k + lam s_k) / sum_j (d_j + lam s_j)

    A term whose denominator is 0 is 0 for everyone; if every ``d_k + lam s_k`` is 0 the weights are
    uniform ([ASSUME]). Returns the weights (summing to 1) and each client's ``data_share``,
    ``loss_share`` and ``loss``.
    """
    k = len(n)
    if k != len(losses):
        raise ValueError(f"{k} sample counts but {len(losses)} losses")
    if not k:
        return [], []
    total_n = float(sum(n))
    powered = [max(float(v), 0.0) ** beta for v in losses]
    total_l = sum(powered)
    d = [float(v) / total_n if total_n > 0 else 0.0 for v in n]
    s = [v / total_l if total_l > 0 else 0.0 for v in powered]
    raw = [d[i] + lam * s[i] for i in range(k)]
    total = sum(raw)
    w = [v / total for v in raw] if total > 0 else [1.0 / k] * k
    factors = [{"data_share": d[i], "loss_share": s[i], "loss": float(losses[i])} for i in range(k)]
    return w, factors


def second_init(params: Params, seed: int) -> Params:
    """G2's initial parameters: every floating tensor of G1's seeded init with its entries randomly
    permuted (seeded); integer buffers copied. [ASSUME] A permutation of i.i.d. initial values is
    another draw from the same distribution, so G2 is a different random init of the same scheme
    without the server building a model (it only sees parameters)."""
    gen = torch.Generator().manual_seed(seed)
    out: Params = {}
    for key in sorted(params):
        value = params[key].detach().cpu()
        if value.is_floating_point() and value.numel() > 1:
            perm = torch.randperm(value.numel(), generator=gen)
            out[key] = value.flatten()[perm].reshape(value.shape).clone()
        else:
            out[key] = value.clone()
    return out


def _prefixed(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{FedMixKey.NET2_PREFIX.value}{k}": v for k, v in params.items()}


def _unprefixed(extras: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = FedMixKey.NET2_PREFIX.value
    return {k[len(prefix):]: v for k, v in extras.items() if k.startswith(prefix)}


@ALGORITHMS.register("fedmix")
@dataclass
class FedMix(Algorithm):
    """FedMix: two global nets, cross pseudo-supervision on weak sites, loss-adaptive weights.

    Client (round t; both local nets start from G1, G2):

    1. weak sites only: ``pj = 1[softmax(Gj(x))_c > 0.5]`` in eval mode; refined
       ``p~j = pj * Bmask`` (box) or ``pj * Cmask`` (image-level, multi-class; single-class: none);
       sample kept if ``Dice(p~1, p~2) >= threshold`` and, for boxes, ``Dice(p~1, Bmask) >=
       box_threshold``; ``n_k`` = kept samples. Pixel sites: ``n_k`` = training size.
    2. one pass (``federation.local_epochs``) per net: net 1 trains on ``p~2``, net 2 on ``p~1``
       (pixel sites: both on the masks), each with its own optimizer (``train.optimizer_state:
       persist`` keeps them across rounds, as the authors' per-client Adam), loss = soft Dice
       (:func:`soft_dice_loss`); ``l_k`` = mean net-1 loss.
    3. a weak site with no kept sample does not train, sends its unchanged copies with ``n_k = 0``
       and its previous ``l_k`` (1.0 in its first round) -- the authors' notebook instead trains on
       the ground-truth mask then (methods.md 1(g)); we do not copy that leak.

    Server: :func:`fedmix_weights` with ``lam``, ``beta``; ``G1 = sum w_k net1_k``, ``G2 = sum w_k
    net2_k``, the same ``w`` for both over the full state dict. G2 starts from :func:`second_init`,
    lives in server state and travels in ``extras`` under ``net2.``; G1 is the evaluated global
    model. Weights and their factors are logged per round (``kind: "weights"``).

    Nothing stays local. With all sites pixel-labelled, ``lam = 0`` and ``loss = "task"``, G1 is
    FedAvg exactly (same loss, batches and weights ``n_k/N``).

    Args:
        lam: weight of the loss term (spec 10).
        beta: power of the loss (spec 1.5, breast).
        threshold: agreement ``Dice(p~1, p~2)`` needed to keep a pseudo-label (spec 0.9).
        box_threshold: ``Dice(p~1, Bmask)`` needed at box sites (spec 0.5).
        prob_threshold: softmax probability above which a pixel is foreground (spec 0.5).
        eps: smoothing of the soft Dice loss and of the selection Dice (spec 1e-4).
        loss: ``"soft_dice"`` (spec) or ``"task"``: the run's configured loss (``loss`` section) on
            the same targets, to compare with baselines trained on it.
        refine_single_class: apply the class vector also with one foreground class (zero the
            foreground of images labelled "absent"); the authors' code does not ([ASSUME] switch).
        skipped: what the server does with a client that kept no sample ([ASSUME] switch):
            ``"keep"`` (methods.md 1(g)) aggregates its unchanged copies with ``n_k = 0`` and its
            previous ``l_k``, so its loss term still pulls the global nets toward last round's;
            ``"drop"`` leaves it out of this round's aggregation (weight 0).
        net2_seed: seed of G2's permutation of the initial weights.
    """

    name: ClassVar[str] = "fedmix"
    description: ClassVar[str] = (
        "FedMix: mixed supervision (pixel/box/image sites), two nets with cross pseudo-labels, weights n/N + lam*l^beta"
    )
    weak_supervision: ClassVar[bool] = True
    message_extras: ClassVar[frozenset[str]] = frozenset({FedMixKey.NET2_PREFIX.value})  # net 2 travels in extras
    lam: float = 10.0
    beta: float = 1.5
    threshold: float = 0.9
    box_threshold: float = 0.5
    prob_threshold: float = 0.5
    eps: float = 1e-4
    loss: Literal["soft_dice", "task"] = "soft_dice"
    refine_single_class: bool = False
    skipped: Literal["keep", "drop"] = "keep"
    net2_seed: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"algorithm.lam must be a finite number >= 0, got {self.lam}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"algorithm.beta must be a finite number > 0, got {self.beta}")
        for key in ("threshold", "box_threshold", "prob_threshold"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise ValueError(f"algorithm.{key} must be in [0, 1], got {value}")
        if not self.eps > 0:
            raise ValueError(f"algorithm.eps must be > 0, got {self.eps}")

    # ------------------------------------------------------------------ client side
    def _loss(self, trainer: LocalTrainer, weak: bool) -> BatchLoss:
        dice = soft_dice_loss(self.eps)

        def loss(model: nn.Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
            target = batch.extras[FedMixKey.TARGET.value].long() if weak else batch.mask
            if self.loss == "task":
                return trainer.task_loss(logits, target)
            out: torch.Tensor = dice(logits, target)
            return out

        return loss

    def pseudo_labels(
        self, net1: nn.Module, net2: nn.Module, trainer: LocalTrainer
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Refined pseudo-labels of both nets for every training sample, and the selection.

        Returns:
            ``(t1, t2, selected)``: ``(N, 1, *spatial)`` uint8 class maps of net 1 and net 2 on the
            training device, and ``(N,)`` bool on CPU.
        """
        kind = SupervisionKind(trainer.supervision)
        n = trainer.num_examples
        selected = torch.zeros(n, dtype=torch.bool)
        t1 = t2 = torch.zeros(0, dtype=torch.uint8)
        was = net1.training, net2.training
        net1.eval()
        net2.eval()
        try:
            with torch.no_grad():
                for batch in trainer.batches():  # the split in order, never augmented
                    idx = batch.extras["index"]
                    box = batch.extras.get(WeakKey.BOX_MASK.value) if kind == SupervisionKind.BOX else None
                    present = batch.extras.get(WeakKey.IMAGE_LABEL.value) if kind == SupervisionKind.IMAGE else None
                    if kind == SupervisionKind.BOX and box is None:
                        raise ValueError("a box-supervised batch without 'box_mask' extras")
                    if kind == SupervisionKind.IMAGE and present is None:
                        raise ValueError("an image-supervised batch without 'image_label' extras")
                    q1, q2 = (refine(threshold_probs(net(batch.image), self.prob_threshold), box=box, present=present,
                                     single_class=self.refine_single_class) for net in (net1, net2))
                    keep = select(q1, q2, threshold=self.threshold, box=box, box_threshold=self.box_threshold,
                                  eps=self.eps)
                    lab1, lab2 = to_label_map(q1), to_label_map(q2)
                    if t1.numel() == 0:
                        t1 = torch.zeros((n, *lab1.shape[1:]), dtype=torch.uint8, device=lab1.device)
                        t2 = torch.zeros_like(t1)
                    t1[idx] = lab1
                    t2[idx] = lab2
                    selected[idx.cpu()] = keep.cpu()
        finally:
            net1.train(was[0])
            net2.train(was[1])
        return t1, t2, selected

    def local_train(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        net1 = model  # holds G1 (on_round_start)
        net2 = copy.deepcopy(model)
        g2 = _unprefixed(ctx.broadcast.extras)
        if not g2:
            raise ValueError("fedmix: the broadcast carries no second network (extras 'net2.*')")
        net2.load_state_dict(g2)
        ctx.scratch[FedMixKey.NET2_STATE.value] = net2
        kind = SupervisionKind(trainer.supervision)
        if kind == SupervisionKind.PIXEL:
            loss = self._loss(trainer, weak=False)
            m1 = trainer.fit(net1, loss=loss)
            m2 = trainer.fit(net2, loss=loss, optimizer_key=FedMixKey.NET2_OPTIMIZER.value)
            n_k, kept = trainer.num_examples, trainer.num_examples
        else:
            t1, t2, selected = self.pseudo_labels(net1, net2, trainer)
            kept = int(selected.sum())
            if kept == 0:
                # no agreeing pseudo-label: skip the round (never fall back to the true mask)
                previous = float(ctx.state.get(FedMixKey.LOSS.value, 1.0))
                return {"loss": previous, FedMixKey.LOSS.value: previous, FedMixKey.SELECTED.value: 0.0,
                        FedMixKey.SKIPPED.value: 1.0, "steps": 0.0}
            target1, target2 = cross_targets(t1, t2)
            subset = torch.nonzero(selected).flatten()
            loss = self._loss(trainer, weak=True)
            m1 = trainer.fit(net1, loss=loss, extras={FedMixKey.TARGET.value: target1}, subset=subset)
            m2 = trainer.fit(net2, loss=loss, extras={FedMixKey.TARGET.value: target2}, subset=subset,
                             optimizer_key=FedMixKey.NET2_OPTIMIZER.value)
            n_k = kept
        ell = float(m1["task_loss"])
        ctx.state[FedMixKey.LOSS.value] = ell
        return {**m1, FedMixKey.LOSS.value: ell, "net2_loss": float(m2["task_loss"]),
                FedMixKey.SELECTED.value: float(kept)}

    def client_update(
        self, model: nn.Module, ctx: ClientContext, num_examples: int, train_metrics: Mapping[str, float]
    ) -> ClientUpdate:
        """Net 1 as params, net 2 in extras under ``net2.``, ``n_k`` = the samples trained on (metric
        ``fedmix_selected``: all of a pixel site, the kept pseudo-labels of a weak one) and ``l_k``
        (metric ``fedmix_loss``)."""
        n_k = int(train_metrics.get(FedMixKey.SELECTED.value, num_examples))
        update = super().client_update(model, ctx, n_k, train_metrics)
        net2: nn.Module = ctx.scratch[FedMixKey.NET2_STATE.value]
        update.extras = _prefixed({k: v.detach().to("cpu", copy=True) for k, v in net2.state_dict().items()})
        return update

    # ------------------------------------------------------------------ server side
    def init_server_state(self, params: Params) -> ServerState:
        return {FedMixKey.NET2_STATE.value: second_init(params, self.net2_seed)}

    def broadcast(self, rnd: int, global_params: Params, server_state: ServerState) -> Broadcast:
        out = super().broadcast(rnd, global_params, server_state)
        out.extras = _prefixed(server_state[FedMixKey.NET2_STATE.value])
        return out

    def aggregation_weights(
        self, updates: Sequence[ClientUpdate], global_params: Params, server_state: ServerState
    ) -> Weighting:
        """:func:`fedmix_weights` from ``n_k`` and ``l_k``, with each client's factors."""

        def loss_of(u: ClientUpdate) -> float:
            value = u.metrics.get(FedMixKey.LOSS.value, 1.0)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 1.0

        weights, factors = fedmix_weights([float(u.num_examples) for u in updates], [loss_of(u) for u in updates],
                                          self.lam, self.beta)
        return Weighting(weights, factors)

    def aggregate(
        self, rnd: int, updates: Sequence[ClientUpdate], global_params: Params, server_state: ServerState
    ) -> Aggregate:
        """G1 and G2 with the same weight vector (over the updates sorted by client id); a dropped
        client is logged with weight 0."""
        ordered = sorted(updates, key=lambda u: u.client_id)
        dropped = [u.client_id for u in ordered if self.skipped == "drop" and u.metrics.get(FedMixKey.SKIPPED.value)]
        ordered = [u for u in ordered if u.client_id not in dropped]
        logged: dict[str, dict[str, float]] = {c: {Field.WEIGHT.value: 0.0, Field.N.value: 0.0} for c in dropped}
        if not ordered:
            return Aggregate(global_params, server_state, weights=logged)
        weighting = self.aggregation_weights(ordered, global_params, server_state)
        g1 = self.combine([u.params for u in ordered], weighting.weights, global_params)
        g2 = self.combine([_unprefixed(u.extras) for u in ordered], weighting.weights,
                          server_state[FedMixKey.NET2_STATE.value])
        server_state[FedMixKey.NET2_STATE.value] = {**server_state[FedMixKey.NET2_STATE.value], **g2}
        logged.update(weight_rows(ordered, weighting))
        return Aggregate({**global_params, **g1}, server_state, weights=logged)
