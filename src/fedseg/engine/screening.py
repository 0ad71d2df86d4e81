"""Update validation on the server, before anything is aggregated (every engine).

:func:`screen_updates` splits a round's decoded :class:`~fedseg.types.ClientUpdate` objects into
the accepted ones and the rejected ones, each rejection with a one-line reason that names the
client. An update is rejected when

* its ``num_examples`` is not an int, is negative (or zero where the method sends its training-split
  size), or differs from the training-split size the site declared at the start of the run (for a
  method that sends the samples it actually trained on, e.g. FedMix: exceeds it);
* it carries a parameter that is not one the algorithm shares (unknown key), or lacks one (missing
  key), or a tensor whose shape or dtype differs from the global parameter's;
* a parameter or extra holds NaN or inf, or a metric is inf or a NaN loss (NaN validation scores
  are fedseg's "undefined", e.g. the Dice of an empty mask, and stay allowed);
* with 3 or more structurally valid updates that changed the model, its norm ``||w_k - w||_2``
  (over the shared floating-point tensors, in float64) exceeds ``max_norm_ratio`` times the
  median of those updates' norms (an unchanged model, e.g. FedMix's client that kept no
  pseudo-label and skipped the round, has norm 0 and would drag the median to 0).

The checks are cheap and exact; they make no assumption about the method beyond what the server
already knows (the global parameters, the keys the clients keep local, the declared sizes).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedseg.algorithms.base import Algorithm
from fedseg.types import ClientUpdate, MessageError, Params, check_extras

__all__ = ["Rejection", "Screening", "screen_updates", "update_problem", "update_norm", "sends_split_size"]


@dataclass(frozen=True)
class Rejection:
    """An update the server refused: the client and why (one line, no data)."""

    client_id: str
    reason: str


@dataclass(frozen=True)
class Screening:
    """What :func:`screen_updates` returns: the accepted updates (input order) and the rejections."""

    accepted: list[ClientUpdate]
    rejected: list[Rejection]


def sends_split_size(algorithm: Algorithm) -> bool:
    """Whether the method's ``num_examples`` is the client's training-split size: true for every
    method that keeps the default :meth:`~fedseg.algorithms.base.Algorithm.client_update`
    (``trainer.num_examples`` = images in the split, also with patches); a method that overrides it
    (FedMix: the samples it kept, 0 when it skipped the round) is only held to ``0 <= n <= size``."""
    return type(algorithm).client_update is Algorithm.client_update


def _names(keys: Collection[str]) -> str:
    ordered = sorted(keys)
    return ", ".join(ordered[:3]) + (f" (+{len(ordered) - 3} more)" if len(ordered) > 3 else "")


def _size_problem(update: ClientUpdate, declared: int | None, exact: bool) -> str | None:
    n = update.num_examples
    if isinstance(n, bool) or not isinstance(n, int):
        return f"num_examples is a {type(n).__name__}, not an int"
    if n < (1 if exact else 0):
        return f"num_examples {n} is not {'positive' if exact else '>= 0'}"
    if declared is not None and exact and n != declared:
        return f"num_examples {n} is not the training-split size {declared} the site declared"
    if declared is not None and not exact and n > declared:
        return f"num_examples {n} exceeds the training-split size {declared} the site declared"
    return None


def _structure_problem(update: ClientUpdate, global_params: Params, shared_keys: Collection[str] | None) -> str | None:
    unknown = set(update.params) - set(global_params if shared_keys is None else shared_keys)
    if unknown:
        return f"unknown parameter(s) {_names(unknown)}: not among the keys the algorithm shares"
    missing = set() if shared_keys is None else set(shared_keys) - set(update.params)
    if missing:
        return f"missing shared parameter(s) {_names(missing)}"
    for key, tensor in update.params.items():
        ref = global_params[key]
        if tuple(tensor.shape) != tuple(ref.shape):
            return f"parameter {key} has shape {tuple(tensor.shape)}; the global model's is {tuple(ref.shape)}"
        if tensor.dtype != ref.dtype:
            return f"parameter {key} has dtype {tensor.dtype}; the global model's is {ref.dtype}"
    return None


def _finite_problem(update: ClientUpdate) -> str | None:
    for where, tensors in (("parameter", update.params), ("extra", update.extras)):
        for key, tensor in tensors.items():
            if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
                return f"{where} {key} holds NaN or inf"
    for key, value in update.metrics.items():
        if isinstance(value, float) and (math.isinf(value) or (math.isnan(value) and key.endswith("loss"))):
            return f"metric {key} is {value}"
    return None


def _extras_problem(algorithm: Algorithm, update: ClientUpdate) -> str | None:
    """Extras outside the algorithm's allow-list (``Algorithm.message_extras``): the reason, or None."""
    try:
        check_extras(update, algorithm.message_extras)
    except MessageError as exc:
        return str(exc)
    return None


def update_problem(
    update: ClientUpdate,
    global_params: Params,
    algorithm: Algorithm,
    *,
    shared_keys: Collection[str] | None = None,
    declared_size: int | None = None,
) -> str | None:
    """The first reason to reject ``update`` on its own (everything but the norm), or None.

    Args:
        update: the decoded update (params already through the up codec).
        global_params: the global parameters the round started from (shapes, dtypes, keys).
        algorithm: the run's method (what its ``num_examples`` means; the extras allow-list).
        shared_keys: the keys every update must carry exactly (the global keys minus the
            algorithm's local ones); None: only keys outside the global parameters are refused.
        declared_size: the training-split size the site declared; None: unknown (not compared).
    """
    return (_size_problem(update, declared_size, sends_split_size(algorithm))
            or _structure_problem(update, global_params, shared_keys)
            or _finite_problem(update)
            or _extras_problem(algorithm, update))


def update_norm(params: Params, global_params: Params) -> float:
    """``||w_k - w||_2`` over the floating-point tensors of ``params``, in float64."""
    return _update_norm(params, global_params, {})


def _update_norm(params: Params, global_params: Params, wide: dict[str, torch.Tensor]) -> float:
    """:func:`update_norm` with ``wide`` caching the float64 copies of ``global_params`` (filled as
    keys are met), so that over a round's updates each global tensor is widened once, not once per
    update; the arithmetic, and so every norm, is the same."""
    total = 0.0
    for key, tensor in params.items():
        if tensor.is_floating_point():
            ref = wide.get(key)
            if ref is None:
                ref = wide[key] = global_params[key].detach().to(torch.float64)
            diff = tensor.detach().to(torch.float64) - ref
            total += float(diff.pow(2).sum())
    return math.sqrt(total)


def screen_updates(
    updates: Sequence[ClientUpdate],
    global_params: Params,
    algorithm: Algorithm,
    *,
    shared_keys: Collection[str] | None = None,
    declared_sizes: Mapping[str, int] | None = None,
    max_norm_ratio: float | None = None,
) -> Screening:
    """Split a round's updates into accepted and rejected ones (see the module docstring).

    The norm check runs over the updates that pass every other check, and only when at least 3
    of them changed the model (a median of two says nothing about either); the median is over
    those. With ``max_norm_ratio`` None it is off. Rejections come in input order, then the norm outliers in input order.
    """
    sizes = declared_sizes or {}
    valid: list[ClientUpdate] = []
    rejected: list[Rejection] = []
    for update in updates:
        problem = update_problem(update, global_params, algorithm, shared_keys=shared_keys,
                                 declared_size=sizes.get(update.client_id))
        if problem is None:
            valid.append(update)
        else:
            rejected.append(Rejection(update.client_id, f"{update.client_id}: {problem}"))
    if max_norm_ratio is None or len(valid) < 3:
        return Screening(valid, rejected)
    wide: dict[str, torch.Tensor] = {}  # the global tensors in float64, once for the round
    norms = [_update_norm(u.params, global_params, wide) for u in valid]
    moved = [n for n in norms if n > 0]  # an unchanged model (a client that skipped the round) sets no scale
    if len(moved) < 3:
        return Screening(valid, rejected)
    median = float(np.median(moved))
    limit = max_norm_ratio * median
    accepted = [u for u, n in zip(valid, norms, strict=True) if n <= limit]
    rejected += [Rejection(u.client_id, f"{u.client_id}: update norm {n:.4g} exceeds federation.max_norm_ratio "
                           f"{max_norm_ratio:g} x the round's median {median:.4g}")
                 for u, n in zip(valid, norms, strict=True) if n > limit]
    return Screening(accepted, rejected)
