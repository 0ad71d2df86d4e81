"""Robust aggregation rules and update clipping: the one combine step every algorithm's aggregate uses.

Every algorithm turns its clients' shared tensors into new global tensors through
:attr:`fedseg.algorithms.base.Algorithm.combine` (a :class:`Combiner`), called as
``combine(updates, weights, reference)`` with the updates sorted by client id, the algorithm's
weights (``n_k`` for FedAvg, AAM's ``alpha_k`` for FedSegNet...) and the tensors the clients started
from (the global parameters; FedMix's second net for its extras). The builder sets it from the
``aggregation`` section of the config; the default (``rule: mean``, no clipping) is exactly
:func:`~fedseg.algorithms.params.weighted_average`, bit for bit.

With ``clip_norm: C`` each update is first clipped: ``w_k <- w + (w_k - w) min(1, C / ||w_k - w||)``,
the norm taken over all its floating tensors together (integer buffers are not clipped). Then the
rule, over floating tensors (Flower's ``flwr.serverapp.strategy`` implementations are the oracle;
tests/algorithms/test_robust.py compares them):

=============  ============================================================  ===============
rule           result per key (``n`` updates, ``f = num_malicious``)          uses weights
=============  ============================================================  ===============
mean           ``sum_k w_k x_k / sum_k w_k``                                  yes
median         coordinate-wise median (mean of the two middle values for      no (as FedMedian)
               even ``n``)
trimmed_mean   coordinate-wise mean after cutting ``int(beta n)`` values at   no (as FedTrimmedAvg)
               each end, ``beta = trim_fraction``
krum           the one update with the lowest Krum score                      no (one update)
multi_krum     weighted mean of the ``m`` lowest scores (``m = num_selected``,  yes (as MultiKrum)
               default ``n - f``; Flower's default is 1)
bulyan         Multi-Krum selects ``theta = n - 2f``; per coordinate the mean  no (as Bulyan)
               of the ``theta - 2f`` values closest to their median
=============  ============================================================  ===============

The Krum score of update ``i`` is the sum of its squared L2 distances (over all floating tensors
every update carries) to its ``max(1, n - f - 2)`` nearest other updates (Flower's
``select_multikrum``; self is excluded by index, not by the position of a zero distance).

Keys missing from some updates: ``mean``, ``median`` and ``trimmed_mean`` work per key over the
updates that carry it; the Krum family measures distances over the keys every update carries and
then combines each key over the selected updates that carry it. Integer buffers (e.g.
``num_batches_tracked``) keep :func:`weighted_average`'s treatment under every rule: the maximum.

Too few updates in a round (after failures or rejections): Bulyan needs ``n >= 4f + 3`` and, as
Flower's strategy, then keeps the reference (the round changes nothing, with a warning); Krum and
Multi-Krum run with what arrived (warning when ``n < 2f + 3``). :meth:`Combiner.check` refuses a
configuration whose planned clients per round are too few, before the run starts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedseg.algorithms.params import ordered_keys, weighted_average
from fedseg.types import Params

__all__ = ["RULES", "Combiner", "clip_updates", "krum_scores", "multikrum_select"]

logger = logging.getLogger(__name__)

RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan")
"""The ``aggregation.rule`` values."""


def clip_updates(updates: Sequence[Params], reference: Params, clip_norm: float) -> list[Params]:
    """Each update with its delta ``w_k - w`` scaled to L2 norm at most ``clip_norm``.

    The norm is taken over every floating tensor of the update together (in float64); integer
    tensors are returned unchanged, and so is an update already within the bound (no round trip).

    Raises:
        ValueError: ``clip_norm`` is not positive, or a floating tensor has no counterpart of the
            same shape in ``reference`` (a delta cannot be formed).
    """
    if not clip_norm > 0:
        raise ValueError(f"aggregation.clip_norm must be > 0, got {clip_norm}")
    out: list[Params] = []
    for update in updates:
        deltas: dict[str, torch.Tensor] = {}
        for key, tensor in update.items():
            if not tensor.is_floating_point():
                continue
            ref = reference.get(key)
            if ref is None or ref.shape != tensor.shape:
                raise ValueError(
                    f"aggregation.clip_norm: update tensor {key!r} {tuple(tensor.shape)} has no reference of that "
                    f"shape ({'missing' if ref is None else tuple(ref.shape)}), so its delta cannot be clipped"
                )
            deltas[key] = tensor.to(torch.float64) - ref.to(torch.float64)
        norm = math.sqrt(sum(float(d.square().sum()) for d in deltas.values()))
        if norm <= clip_norm:
            out.append(update)
            continue
        factor = clip_norm / norm
        out.append({k: (reference[k].to(torch.float64) + deltas[k] * factor).to(v.dtype) if k in deltas else v
                    for k, v in update.items()})
    return out


def _flat(update: Params, keys: Sequence[str]) -> torch.Tensor:
    if not keys:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([update[k].reshape(-1).to(torch.float64) for k in keys])


def krum_scores(updates: Sequence[Params], num_malicious: int) -> list[float]:
    """Krum score of each update: the sum of its squared L2 distances to its ``max(1, n - f - 2)``
    nearest other updates, over the floating keys every update carries (float64)."""
    n = len(updates)
    common = [k for k in ordered_keys(updates)
              if all(k in u and u[k].is_floating_point() for u in updates)]
    flat = [_flat(u, common) for u in updates]
    dist = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = float((flat[i] - flat[j]).square().sum())
    closest = min(max(1, n - num_malicious - 2), n - 1)
    scores = []
    for i in range(n):
        others = torch.cat([dist[i, :i], dist[i, i + 1:]])
        scores.append(float(others.sort().values[:closest].sum()))
    return scores


def multikrum_select(updates: Sequence[Params], num_malicious: int, num_selected: int) -> list[int]:
    """Indices of the ``num_selected`` updates with the lowest Krum scores (ties: lower index first)."""
    scores = krum_scores(updates, num_malicious)
    order = sorted(range(len(updates)), key=lambda i: (scores[i], i))
    return order[:max(1, num_selected)]


def _median(stack: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median over dim 0; the mean of the two middle values for an even count."""
    s = stack.sort(dim=0).values
    n = s.shape[0]
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _trimmed_mean(stack: torch.Tensor, fraction: float) -> torch.Tensor:
    n = stack.shape[0]
    cut = int(fraction * n)
    return stack.sort(dim=0).values[cut:n - cut].mean(dim=0)


def _closest_mean(stack: torch.Tensor, beta: int) -> torch.Tensor:
    """Per coordinate, the mean of the ``beta`` values closest to the coordinate-wise median."""
    distance = (stack - _median(stack)).abs()
    idx = distance.argsort(dim=0, stable=True)[:beta]
    return stack.gather(0, idx).mean(dim=0)


@dataclass(frozen=True)
class Combiner:
    """``combine(updates, weights, reference)``: the new values of the updates' keys (see the module
    docstring). Fields mirror the ``aggregation`` config section."""

    rule: str = "mean"
    clip_norm: float | None = None
    trim_fraction: float = 0.2
    num_malicious: int = 0
    num_selected: int | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"aggregation.rule {self.rule!r} is unknown; allowed: {', '.join(RULES)}")
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"aggregation.trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.num_malicious < 0:
            raise ValueError(f"aggregation.num_malicious must be >= 0, got {self.num_malicious}")

    @property
    def is_plain_mean(self) -> bool:
        """True for the default: the algorithm's own weighted average, unclipped."""
        return self.rule == "mean" and self.clip_norm is None

    def minimum_clients(self) -> int:
        """The fewest updates per round the rule is defined for with ``num_malicious`` attackers."""
        f = self.num_malicious
        if self.rule in ("krum", "multi_krum"):
            return 2 * f + 3
        if self.rule == "bulyan":
            return 4 * f + 3
        return 1

    def check(self, clients_per_round: int) -> None:
        """Refuse a configuration that cannot work with ``clients_per_round`` updates.

        Raises:
            ValueError: too few clients for the rule and ``num_malicious`` (Krum: ``2f + 3``,
                Bulyan: ``4f + 3``), ``num_selected`` above the clients per round, or a
                ``trim_fraction`` that trims nothing at this many clients.
        """
        need = self.minimum_clients()
        if clients_per_round < need:
            raise ValueError(
                f"aggregation.rule {self.rule} with num_malicious {self.num_malicious} needs at least {need} clients "
                f"per round, got {clients_per_round}; lower aggregation.num_malicious, sample more clients "
                "(federation.fraction / min_clients) or use median / trimmed_mean"
            )
        if self.rule == "multi_krum" and self.num_selected is not None and self.num_selected > clients_per_round:
            raise ValueError(f"aggregation.num_selected {self.num_selected} exceeds the {clients_per_round} clients "
                             "per round")
        if self.rule == "trimmed_mean" and self.trim_fraction > 0 and int(self.trim_fraction * clients_per_round) == 0:
            raise ValueError(
                f"aggregation.trim_fraction {self.trim_fraction} trims nothing with {clients_per_round} clients per "
                f"round (int(beta n) = 0, a plain mean); use at least {1 / clients_per_round:.3g} or rule median"
            )

    def __call__(self, updates: Sequence[Params], weights: Sequence[float], reference: Params) -> Params:
        """The combined tensors of every key the updates carry.

        Args:
            updates: the clients' tensors, sorted by client id (the result is then independent of
                arrival order).
            weights: one per update (need not sum to 1); see the module docstring for which rules
                use them.
            reference: the tensors the clients started from (clipping's ``w``; Bulyan with too few
                updates returns its values).
        """
        if len(updates) != len(weights):
            raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
        if self.clip_norm is not None:
            updates = clip_updates(updates, reference, self.clip_norm)
        if self.rule == "mean":
            return weighted_average(updates, weights)
        keys = ordered_keys(updates)
        out: Params = {}
        for key in keys:  # integer buffers: today's treatment (the maximum), under every rule
            ints = [u[key] for u in updates if key in u and not u[key].is_floating_point()]
            if ints:
                out[key] = torch.stack(ints).amax(dim=0)
        floats = [k for k in keys if k not in out]
        if self.rule in ("median", "trimmed_mean"):
            for key in floats:
                stack = torch.stack([u[key].to(torch.float64) for u in updates if key in u])
                value = _median(stack) if self.rule == "median" else _trimmed_mean(stack, self.trim_fraction)
                out[key] = value.to(next(u[key] for u in updates if key in u).dtype)
            return out
        return {**out, **self._krum_family(updates, weights, reference, floats)}

    def _krum_family(self, updates: Sequence[Params], weights: Sequence[float], reference: Params,
                     floats: Sequence[str]) -> Params:
        n, f = len(updates), self.num_malicious
        if n < self.minimum_clients():
            if self.rule == "bulyan":
                logger.warning("bulyan needs %d updates (4 num_malicious + 3), got %d: the round keeps the "
                               "reference tensors", self.minimum_clients(), n)
                return {k: reference[k].clone() for k in floats if k in reference}
            logger.warning("%s with num_malicious %d expects %d updates, got %d", self.rule, f,
                           self.minimum_clients(), n)
        if self.rule == "krum":
            chosen = multikrum_select(updates, f, 1)
        elif self.rule == "multi_krum":
            chosen = multikrum_select(updates, f, self.num_selected or max(1, n - f))
        else:
            chosen = multikrum_select(updates, f, n - 2 * f)
        logger.debug("%s selected updates %s of %d", self.rule, chosen, n)
        selected = [{k: v for k, v in updates[i].items() if k in floats} for i in chosen]
        if self.rule == "krum":  # one update: its weight does not matter (even 0)
            return weighted_average(selected, [1.0])
        if self.rule == "multi_krum":
            return weighted_average(selected, [weights[i] for i in chosen])
        out: Params = {}
        for key in floats:
            tensors = [u[key] for u in selected if key in u]
            if not tensors:
                continue
            beta = max(1, len(tensors) - 2 * f)
            out[key] = _closest_mean(torch.stack([t.to(torch.float64) for t in tensors]), beta).to(tensors[0].dtype)
        return out
