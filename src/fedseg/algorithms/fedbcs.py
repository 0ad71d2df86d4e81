"""FedBCS's dual-level prototype alignment (CDPA; methods.md section 2, decisions section 7), and
its single-level relatives FPL and FedProto, on the FedBCS U-Net (``model.name: fedbcs_unet``).

All three train one global model (FedAvg weights ``n_k``) and exchange per-class prototypes:

* client: during the **last local epoch**, before each optimizer step and under no_grad, the mean
  feature of each class (background included) of the batch at each level, from the features the
  aux taps captured in that step's forward pass; the batch means are averaged over the batches
  (:class:`~fedseg.losses.prototype.PrototypeAverage`) and sent as extras ``proto.<level>.<class>``
  of shape ``(C,)``;
* server: per (level, class) FINCH's coarsest partition (:func:`aggregate_prototypes`; FedProto:
  the ``n_k``-weighted mean), broadcast as ``cproto.<level>.<class>`` of shape ``(K, C)``;
* client loss, once cluster prototypes were received (round 2 on): task loss + ``proto_weight`` *
  sum over levels of the level loss on foreground pixels.

The authors' loss is ``1/2 (CE + softDice) + 1/2 sum_l L_MP^l``; here the task half is the
configured loss (``loss.dice_weight``/``loss.ce_weight``, set both to 0.5 to match it) and the
prototype half is ``proto_weight`` (default 0.5). fedseg's Dice is MONAI's (per sample, then
averaged; smoothing 1e-5 on both sides), the authors' pools the whole batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedseg.algorithms.base import Aggregate, Algorithm, Batch, ClientContext
from fedseg.algorithms.finch import aggregate_prototypes
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.losses.prototype import PrototypeAverage, batch_prototypes, labels_on_grid, prototype_alignment_loss
from fedseg.models.taps import offered_outputs
from fedseg.records import SERVER
from fedseg.types import Broadcast, ClientUpdate, Params, ServerState

__all__ = ["FedBCS", "FPL", "FedProto", "ProtoKey", "pack_prototypes", "unpack_prototypes", "prototype_mse_loss"]

Prototypes = dict[str, dict[int, torch.Tensor]]
"""``{level: {class: tensor}}``."""


class ProtoKey(StrEnum):
    """Extras prefixes and state keys of the prototype methods."""

    LOCAL = "proto."  # ClientUpdate.extras: proto.<level>.<class> -> (C,)
    CLUSTER = "cproto."  # Broadcast.extras: cproto.<level>.<class> -> (K, C)
    SERVER_STATE = "prototypes"  # server state: the last cluster prototypes, flat cproto.* keys
    SCRATCH_AVG = "proto_average"  # ctx.scratch: {level: PrototypeAverage} in the last local epoch
    SCRATCH_BANK = "proto_bank"  # ctx.scratch: the received prototypes, unpacked
    SCRATCH_GEN = "proto_generator"  # ctx.scratch: the pixel-subsampling generator


def pack_prototypes(prefix: str, prototypes: Mapping[str, Mapping[int, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{level: {class: t}}`` -> ``{f"{prefix}{level}.{class}": t}`` (CPU copies)."""
    return {f"{prefix}{level}.{cls}": t.detach().to("cpu", copy=True)
            for level, per_class in prototypes.items() for cls, t in per_class.items()}


def unpack_prototypes(prefix: str, extras: Mapping[str, torch.Tensor]) -> Prototypes:
    """The inverse of :func:`pack_prototypes` over the keys with ``prefix`` (others ignored).

    Raises:
        ValueError: a key under ``prefix`` is not ``<level>.<integer class>``.
    """
    out: Prototypes = {}
    for key, tensor in extras.items():
        if not key.startswith(prefix):
            continue
        level, _, cls = key[len(prefix):].rpartition(".")
        if not level or not cls.lstrip("-").isdigit():
            raise ValueError(f"prototype extras key {key!r} is not {prefix}<level>.<integer class>")
        out.setdefault(level, {})[int(cls)] = tensor
    return out


def prototype_mse_loss(features: torch.Tensor, labels: torch.Tensor, prototypes: Mapping[int, torch.Tensor]
                       ) -> torch.Tensor:
    """FedProto's term: ``MSE(f, mean prototype of f's class)`` over the foreground pixels (label != 0)
    whose class has a prototype (mean over pixels and channels); an exact 0 on the graph when none.

    Args:
        features: ``(B, C, *spatial)``.
        labels: ``(B, *S)`` or ``(B, 1, *S)`` class ids, nearest-resized to ``spatial``.
        prototypes: ``{class: (K, C)}``; the mean over K is the target.
    """
    grid = labels_on_grid(labels, tuple(features.shape[2:])).reshape(-1)
    flat = features.movedim(1, -1).reshape(-1, features.shape[1])
    target = torch.zeros_like(flat)
    keep = torch.zeros_like(grid, dtype=torch.bool)
    for cls, proto in prototypes.items():
        if cls == 0:
            continue
        sel = grid == cls
        target[sel] = proto.detach().reshape(-1, flat.shape[1]).mean(dim=0).to(flat.dtype)
        keep |= sel
    if not bool(keep.any()):
        return features.sum() * 0.0
    return F.mse_loss(flat[keep], target[keep])


@ALGORITHMS.register("fedbcs")
@dataclass
class FedBCS(Algorithm):
    """FedBCS's CDPA: FedAvg plus dual-level (encoder E, decoder D) clustered prototype alignment.

    Args:
        levels: prototype levels, names the model offers as aux outputs (``fedbcs_unet``:
            ``encoder``, ``decoder``, ``last``); ``[]`` turns prototypes off (FedAvg).
        tau: InfoNCE temperature (authors 0.005).
        logit_clamp: upper clamp of ``cos / tau`` (20).
        exp_clamp: upper clamp of each exponential (1e6).
        proto_weight: weight of the summed level losses (the authors' 1/2).
        num_pixels: random foreground pixels per level loss (None: all; bounds the encoder
            level's full-resolution memory).
    """

    name: ClassVar[str] = "fedbcs"
    description: ClassVar[str] = "FedBCS: FedAvg + dual-level FINCH-clustered prototype alignment (InfoNCE + MSE)"
    message_extras: ClassVar[frozenset[str]] = frozenset({ProtoKey.LOCAL.value, ProtoKey.CLUSTER.value})
    levels: list[str] = field(default_factory=lambda: ["encoder", "decoder"])
    tau: float = 0.005
    logit_clamp: float = 20.0
    exp_clamp: float = 1e6
    proto_weight: float = 0.5
    num_pixels: int | None = None

    def __post_init__(self) -> None:
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"algorithm.levels has duplicates: {self.levels}")
        if not self.tau > 0:
            raise ValueError(f"algorithm.tau must be > 0, got {self.tau}")
        if not self.proto_weight >= 0:
            raise ValueError(f"algorithm.proto_weight must be >= 0, got {self.proto_weight}")
        if self.num_pixels is not None and self.num_pixels < 1:
            raise ValueError(f"algorithm.num_pixels must be >= 1 or null (all pixels), got {self.num_pixels}")

    # ------------------------------------------------------------------ client side
    def aux_outputs(self, model: nn.Module) -> Mapping[str, str]:
        """The taps of :attr:`levels` (raises naming what the model offers, e.g. a plain U-Net)."""
        return offered_outputs(model, list(self.levels)) if self.levels else {}

    def on_epoch_start(self, model: nn.Module, ctx: ClientContext, epoch: int, epochs: int) -> None:
        """Start the prototype averages at the last local epoch."""
        if epoch == epochs and self.levels:
            ctx.scratch[ProtoKey.SCRATCH_AVG.value] = {level: PrototypeAverage() for level in self.levels}

    def level_loss(self, features: torch.Tensor, labels: torch.Tensor, prototypes: Mapping[int, torch.Tensor],
                   ctx: ClientContext) -> torch.Tensor:
        """One level's alignment loss: InfoNCE against the cluster prototypes + MSE to their mean."""
        gen = None
        if self.num_pixels is not None:
            gen = ctx.scratch.get(ProtoKey.SCRATCH_GEN.value)
            if gen is None:
                gen = torch.Generator().manual_seed(zlib.crc32(f"{ctx.client_id}:{ctx.round}".encode()))
                ctx.scratch[ProtoKey.SCRATCH_GEN.value] = gen
        return prototype_alignment_loss(features, labels, prototypes, tau=self.tau, logit_clamp=self.logit_clamp,
                                        exp_clamp=self.exp_clamp, num_pixels=self.num_pixels, generator=gen)

    def extra_loss(self, model: nn.Module, batch: Batch, logits: torch.Tensor,
                   ctx: ClientContext) -> torch.Tensor | None:
        """Collects the batch prototypes (last epoch, no_grad, before the step); from round 2 on
        returns ``proto_weight * sum_levels level_loss`` (None while no prototypes were received)."""
        if not self.levels:
            return None
        averages: dict[str, PrototypeAverage] | None = ctx.scratch.get(ProtoKey.SCRATCH_AVG.value)
        if averages is not None:
            for level in self.levels:
                averages[level].update(batch_prototypes(batch.aux[level], batch.mask))
        if ProtoKey.SCRATCH_BANK.value not in ctx.scratch:
            ctx.scratch[ProtoKey.SCRATCH_BANK.value] = unpack_prototypes(ProtoKey.CLUSTER.value, ctx.broadcast.extras)
        bank: Prototypes = ctx.scratch[ProtoKey.SCRATCH_BANK.value]
        terms = [self.level_loss(batch.aux[level], batch.mask, bank[level], ctx)
                 for level in self.levels if bank.get(level)]
        if not terms:
            return None
        return self.proto_weight * torch.stack(terms).sum()

    def client_update(self, model: nn.Module, ctx: ClientContext, num_examples: int,
                      train_metrics: Mapping[str, float]) -> ClientUpdate:
        """FedAvg's update plus the last local epoch's prototypes, ``proto.<level>.<class>`` (C,)."""
        update = super().client_update(model, ctx, num_examples, train_metrics)
        averages: dict[str, PrototypeAverage] = ctx.scratch.get(ProtoKey.SCRATCH_AVG.value, {})
        update.extras = pack_prototypes(ProtoKey.LOCAL.value, {lv: avg.result() for lv, avg in averages.items()})
        return update

    # ------------------------------------------------------------------ server side
    def server_prototypes(self, updates: Sequence[ClientUpdate]) -> Prototypes:
        """``{level: {class: (K, C)}}`` from the updates' prototypes: FINCH's coarsest cluster means."""
        return aggregate_prototypes([unpack_prototypes(ProtoKey.LOCAL.value, u.extras) for u in updates])

    def aggregate(self, rnd: int, updates: Sequence[ClientUpdate], global_params: Params,
                  server_state: ServerState) -> Aggregate:
        """FedAvg of the weights; the prototypes of this round's updates replace the server's (kept
        when no update carries any). Logs the cluster count per (level, class)."""
        agg = super().aggregate(rnd, updates, global_params, server_state)
        ordered = sorted((u for u in updates if u.extras), key=lambda u: u.client_id)
        if not ordered:
            return agg
        protos = self.server_prototypes(ordered)
        agg.server_state = {**agg.server_state, ProtoKey.SERVER_STATE.value: pack_prototypes(ProtoKey.CLUSTER.value,
                                                                                             protos)}
        counts = {f"clusters.{lv}.{c}": int(t.shape[0]) for lv, per in protos.items() for c, t in per.items()}
        agg.metrics = {**agg.metrics, SERVER: {**agg.metrics.get(SERVER, {}), **counts}}
        return agg

    def broadcast(self, rnd: int, global_params: Params, server_state: ServerState) -> Broadcast:
        """The global model and the last cluster prototypes, ``cproto.<level>.<class>`` (K, C)."""
        out = super().broadcast(rnd, global_params, server_state)
        out.extras = dict(server_state.get(ProtoKey.SERVER_STATE.value, {}))
        return out


@ALGORITHMS.register("fpl")
@dataclass
class FPL(FedBCS):
    """FPL (Huang et al., CVPR'23) for segmentation: FedBCS's clustered prototypes, InfoNCE + MSE,
    at one level, the last decoder feature map before the head (``last``)."""

    name: ClassVar[str] = "fpl"
    description: ClassVar[str] = "FPL: FedAvg + FINCH-clustered prototype alignment at the last decoder layer"
    levels: list[str] = field(default_factory=lambda: ["last"])


@ALGORITHMS.register("fedproto")
@dataclass
class FedProto(FedBCS):
    """FedProto-style (Tan et al., AAAI'22) on a global model: FedAvg plus ``lambda * MSE(f, p_c)``
    on foreground pixels, ``p_c`` the ``n_k``-weighted mean of the clients' class-c prototypes at
    the last decoder feature map (no clustering, no contrastive term); ``proto_weight`` = lambda."""

    name: ClassVar[str] = "fedproto"
    description: ClassVar[str] = "FedProto: FedAvg + MSE to the n_k-weighted mean class prototype (last decoder layer)"
    levels: list[str] = field(default_factory=lambda: ["last"])
    proto_weight: float = 1.0

    def level_loss(self, features: torch.Tensor, labels: torch.Tensor, prototypes: Mapping[int, torch.Tensor],
                   ctx: ClientContext) -> torch.Tensor:
        return prototype_mse_loss(features, labels, prototypes)

    def server_prototypes(self, updates: Sequence[ClientUpdate]) -> Prototypes:
        """``{level: {class: (1, C)}}``: the mean over the clients holding the class, weights ``n_k``."""
        sums: dict[str, dict[int, torch.Tensor]] = {}
        weights: dict[str, dict[int, float]] = {}
        for u in updates:
            for level, per_class in unpack_prototypes(ProtoKey.LOCAL.value, u.extras).items():
                for cls, proto in per_class.items():
                    n = float(u.num_examples)
                    prev = sums.setdefault(level, {}).get(cls)
                    sums[level][cls] = n * proto.double() if prev is None else prev + n * proto.double()
                    weights.setdefault(level, {})[cls] = weights.get(level, {}).get(cls, 0.0) + n
        return {lv: {c: (t / max(weights[lv][c], 1e-12)).float()[None] for c, t in per.items()}
                for lv, per in sums.items()}
