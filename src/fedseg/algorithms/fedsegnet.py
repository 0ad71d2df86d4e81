"""FedSegNet's Adaptive Aggregation Mechanism (Fareed et al.; methods.md, FedSegNet (d)).

The paper names the factors of its client weights (local validation Dice and HD95, divergence of
the client's model from the global one, data volume and diversity) but gives no formula. The
formula below is the concrete, ablatable form of methods.md ([ASSUME]); every choice the paper
and methods.md leave open is marked *ours*.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal

import torch
from torch import nn

from fedseg.algorithms.base import Algorithm, Batch, ClientContext, LocalTrainer, Weighting
from fedseg.algorithms.registry import ALGORITHMS
from fedseg.types import ClientUpdate, Params, ServerState

__all__ = ["FedSegNet", "AAMKey", "aam_weights", "update_distance", "histogram_entropy", "label_volume_diversity",
           "intensity_diversity"]


class AAMKey(StrEnum):
    """Scalar metrics a FedSegNet client sends."""

    VAL_DICE = "aam_val_dice"
    VAL_HD95 = "aam_val_hd95"
    DIVERSITY = "aam_diversity"


def update_distance(params: Params, reference: Params) -> float:
    """``||w_k - w||_2`` over the floating tensors both hold with the same shape (float64)."""
    total = 0.0
    for key, value in params.items():
        ref = reference.get(key)
        if ref is None or not value.is_floating_point() or ref.shape != value.shape:
            continue
        total += float((value.to(torch.float64) - ref.to(torch.float64)).pow(2).sum())
    return math.sqrt(total)


def histogram_entropy(values: torch.Tensor, bins: int, lo: float, hi: float) -> float:
    """Normalised Shannon entropy ``-sum_i p_i log p_i / log(bins)`` in [0, 1] of ``values``
    (any shape) in ``bins`` equal bins over ``[lo, hi]`` (values outside are clipped in)."""
    if values.numel() == 0 or bins < 2:
        return 0.0
    counts = torch.histc(values.detach().to(torch.float64).clamp(lo, hi).cpu(), bins=bins, min=lo, max=hi)
    p = counts / counts.sum()
    p = p[p > 0]
    return max(0.0, float(-(p * p.log()).sum() / math.log(bins)))


def label_volume_diversity(batches: Iterable[Batch], bins: int) -> float:
    """Diversity proxy (ours): normalised entropy of the per-image foreground fraction.

    For each training image, ``f_i = #(mask > 0) / #voxels`` in [0, 1]; the proxy is
    :func:`histogram_entropy` of the ``f_i`` in ``bins`` equal bins over [0, 1]. A site whose
    lesions are all the same size scores 0; one spread over many sizes scores up to 1.
    """
    fractions = [(b.mask > 0).flatten(1).float().mean(dim=1).cpu() for b in batches]
    return histogram_entropy(torch.cat(fractions), bins, 0.0, 1.0) if fractions else 0.0


def intensity_diversity(batches: Iterable[Batch], bins: int) -> float:
    """Diversity proxy (ours): normalised entropy of all training intensities over [-3, 3]
    (images are intensity-normalised, so this is +-3 standard deviations)."""
    counts = torch.zeros(bins, dtype=torch.float64)
    for b in batches:
        counts += torch.histc(b.image.detach().to(torch.float64).clamp(-3, 3).cpu(), bins=bins, min=-3.0, max=3.0)
    if counts.sum() == 0 or bins < 2:
        return 0.0
    p = counts[counts > 0] / counts.sum()
    return max(0.0, float(-(p * p.log()).sum() / math.log(bins)))


def _fill(values: Sequence[float | None]) -> list[float]:
    """Missing values (a client without validation data) take the mean of the others (ours);
    0 when nobody reported one, so the factor is the same for every client."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    mean = sum(present) / len(present) if present else 0.0
    return [v if v is not None and math.isfinite(v) else mean for v in values]


def aam_weights(
    *,
    dice: Sequence[float | None],
    hd95: Sequence[float | None],
    divergence: Sequence[float],
    n: Sequence[float],
    diversity: Sequence[float | None],
    a: float,
    b: float,
    c: float,
    d: float,
    e: float,
    temperature: float = 1.0,
    normalisation: Literal["softmax", "linear"] = "softmax",
    hd_max: float | None = None,
) -> tuple[list[float], list[dict[str, float]]]:
    """The AAM weights ``alpha_k`` (summing to 1) and every client's factors.

    ::

        s_k = a Dice_k + b (1 - HD95_k / HD_max) - c ||w_k - w|| / sum_j ||w_j - w|| + d n_k / N + e div_k
        alpha_k = softmax_k(s_k / T)                         (normalisation = "softmax")
        alpha_k = max(s_k, 0) / sum_j max(s_j, 0)            (normalisation = "linear")

    with ``N = sum_j n_j`` over this round's clients. Ours where methods.md is silent:
    ``HD_max`` is ``hd_max`` when given, else the largest HD95 this round (so the worst client
    scores 0 on that term); ``1 - HD95/HD_max`` is clipped to [0, 1]; ``HD_max = 0`` makes the
    term 1 for everyone; a divergence sum of 0 makes the divergence term 0; linear normalisation
    clips negative scores at 0. With every factor off (``a = b = c = d = e = 0``), or linear
    scores that are all 0, there is nothing to weigh by and the weights are FedAvg's ``n_k / N``.

    Returns:
        ``(alpha, factors)``: one weight per client and one dict per client with ``score``,
        ``dice``, ``hd95_term``, ``divergence`` (the normalised share), ``size`` (``n_k/N``) and
        ``diversity``.
    """
    k = len(n)
    if not k:
        return [], []
    dice_v = _fill(dice)
    hd_v = _fill(hd95)
    div_v = _fill(diversity)
    top = hd_max if hd_max is not None else max(hd_v)
    hd_term = [min(1.0, max(0.0, 1.0 - h / top)) if top > 0 else 1.0 for h in hd_v]
    total_div = sum(divergence)
    div_share = [v / total_div if total_div > 0 else 0.0 for v in divergence]
    total_n = sum(n)
    size = [v / total_n if total_n > 0 else 1.0 / k for v in n]
    scores = [
        a * dice_v[i] + b * hd_term[i] - c * div_share[i] + d * size[i] + e * div_v[i] for i in range(k)
    ]
    clipped = [max(s, 0.0) for s in scores]
    if not any((a, b, c, d, e)) or (normalisation == "linear" and sum(clipped) <= 0):
        alpha = list(size)  # no factor to weigh by: FedAvg
    elif normalisation == "softmax":
        alpha = torch.softmax(torch.tensor(scores, dtype=torch.float64) / temperature, dim=0).tolist()
    else:
        alpha = [s / sum(clipped) for s in clipped]
    factors = [
        {"score": scores[i], "dice": dice_v[i], "hd95_term": hd_term[i], "divergence": div_share[i],
         "size": size[i], "diversity": div_v[i]}
        for i in range(k)
    ]
    return alpha, factors


@ALGORITHMS.register("fedsegnet")
@dataclass
class FedSegNet(Algorithm):
    """FedSegNet's Adaptive Aggregation Mechanism: ``w^{t+1} = sum_k alpha_k w_k^t``.

    Client: trains like FedAvg, then evaluates its trained model on its **own validation split**
    (the test split never reaches a hook) and sends ``aam_val_dice``, ``aam_val_hd95`` (mm) and
    the diversity proxy ``aam_diversity`` as scalar metrics. Server: computes each update's
    divergence ``||w_k - w||_2`` from the decoded updates and weights them by :func:`aam_weights`::

        s_k = a Dice_k + b (1 - HD95_k/HD_max) - c ||w_k - w||/sum_j ||w_j - w|| + d n_k/N + e div_k
        alpha_k = softmax(s_k / T)   or   max(s_k, 0) / sum_j max(s_j, 0)

    Nothing stays local. With ``a = b = c = e = 0``, ``d = 1`` and ``normalisation = "linear"``,
    ``alpha_k = n_k / N``: FedAvg (methods.md check 1); with every factor off, also FedAvg. Weights and
    factors of every client are returned with the aggregate (:class:`~fedseg.algorithms.base.Weighting`);
    the engine logs them (``kind: "weights"`` lines in metrics.jsonl) and the report plots them.

    Sparsification and quantisation of the updates are not part of the algorithm: they are the
    engine's codecs (``codec.up: [{name: topk, ...}, {name: int8}]``) and work with any method.

    Args:
        a, b, c, d, e: weights of the Dice, HD95, divergence, data-size and diversity factors
            (methods.md defaults 1/5 each; 0 ablates a factor and skips its computation).
        temperature: the softmax temperature ``T``.
        normalisation: ``"softmax"`` or ``"linear"``.
        hd_max: the HD95 (mm) that scores 0; None: the largest HD95 of the round (ours).
        diversity: the diversity proxy, ``"label_volume"`` (entropy of per-image foreground
            fractions) or ``"intensity"`` (entropy of the intensity histogram); both ours.
        diversity_bins: histogram bins of the proxy.
    """

    name: ClassVar[str] = "fedsegnet"
    description: ClassVar[str] = (
        "FedSegNet AAM: weights softmax(a*Dice + b*HD95 term - c*divergence + d*n/N + e*diversity) from local val"
    )
    a: float = 0.2
    b: float = 0.2
    c: float = 0.2
    d: float = 0.2
    e: float = 0.2
    temperature: float = 1.0
    normalisation: Literal["softmax", "linear"] = "softmax"
    hd_max: float | None = None
    diversity: Literal["label_volume", "intensity"] = "label_volume"
    diversity_bins: int = 10

    def __post_init__(self) -> None:
        for key in ("a", "b", "c", "d", "e"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"algorithm.{key} must be a finite number >= 0, got {value}")
        if not self.temperature > 0:
            raise ValueError(f"algorithm.temperature must be > 0, got {self.temperature}")
        if self.hd_max is not None and not self.hd_max > 0:
            raise ValueError(f"algorithm.hd_max must be > 0 or null (the round's largest HD95), got {self.hd_max}")
        if self.diversity_bins < 2:
            raise ValueError(f"algorithm.diversity_bins must be >= 2, got {self.diversity_bins}")

    # ------------------------------------------------------------------ client side
    def local_train(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        metrics = super().local_train(model, ctx, trainer)
        if self.a or self.b:
            val = trainer.evaluate(model, "val")  # the client's own validation split
            if "dice" in val:
                metrics[AAMKey.VAL_DICE.value] = float(val["dice"])
            if "hd95" in val:
                metrics[AAMKey.VAL_HD95.value] = float(val["hd95"])
        if self.e:
            key = f"{AAMKey.DIVERSITY.value}.{self.diversity}.{self.diversity_bins}"
            if key not in ctx.state:  # the training data never changes: compute once
                proxy = label_volume_diversity if self.diversity == "label_volume" else intensity_diversity
                ctx.state[key] = proxy(trainer.batches(), self.diversity_bins)
            metrics[AAMKey.DIVERSITY.value] = float(ctx.state[key])
        return metrics

    # ------------------------------------------------------------------ server side
    def aggregation_weights(
        self, updates: Sequence[ClientUpdate], global_params: Params, server_state: ServerState
    ) -> Weighting:
        """``alpha_k`` of :func:`aam_weights`, with every client's factors, its FedAvg weight, its
        divergence ``||w_k - w||_2`` from the global parameters it started from and its HD95."""
        distances = [update_distance(u.params, global_params) for u in updates]

        def metric(u: ClientUpdate, key: AAMKey) -> float | None:
            value = u.metrics.get(key.value)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        alpha, factors = aam_weights(
            dice=[metric(u, AAMKey.VAL_DICE) for u in updates],
            hd95=[metric(u, AAMKey.VAL_HD95) for u in updates],
            divergence=distances,
            n=[float(u.num_examples) for u in updates],
            diversity=[metric(u, AAMKey.DIVERSITY) for u in updates],
            a=self.a, b=self.b, c=self.c, d=self.d, e=self.e,
            temperature=self.temperature,
            normalisation=self.normalisation,
            hd_max=self.hd_max,
        )
        total_n = sum(u.num_examples for u in updates)
        logged = [
            {
                "fedavg_weight": u.num_examples / total_n if total_n else 1.0 / len(updates),
                "divergence_l2": distances[i],
                **({"hd95": h} if (h := metric(u, AAMKey.VAL_HD95)) is not None else {}),
                **factors[i],
            }
            for i, u in enumerate(updates)
        ]
        return Weighting(alpha, logged)
