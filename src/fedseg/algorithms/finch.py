"""FINCH clustering with cosine distance, and FedBCS's per-(level, class) prototype aggregation.

FINCH (Sarfraz, Sharma, Stiefelhagen, "Efficient Parameter-free Clustering Using First Neighbor
Relations", CVPR 2019) links every point to its first (nearest) neighbour and takes the
connected components of that graph as a partition; the cluster means are then clustered the
same way, level after level. The recursion follows the reference implementation
(*ssarfraz/FINCH-Clustering: finch/finch.py*, copied by *zxy1234321/FedBCS: utils/finch.py*),
which needs scikit-learn for the distance matrix; we do not install it, so the few lines are
written here with numpy and :mod:`scipy.sparse.csgraph`.

FedBCS's server (*zxy1234321/FedBCS: fdmodels/fedbcs.py*, ``proto_aggregation``) runs FINCH on
the client prototypes of each (level, class), takes the **coarsest** partition and broadcasts
its cluster means; a class held by a single client keeps that client's prototype.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.sparse.csgraph import connected_components
from torch import Tensor

__all__ = ["aggregate_prototypes", "coarsest_cluster_means", "finch", "first_neighbour_partition"]

L = TypeVar("L", bound=Hashable)
C = TypeVar("C", bound=Hashable)

# The reference code masks the diagonal with 1e12 so that a point is never its own neighbour.
_SELF = 1e12


def _cosine_distances(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``1 - cos`` between rows, diagonal masked; an all-zero row has distance 1 to everything.

    The zero-row rule matches scikit-learn's ``pairwise_distances(metric="cosine")``, which the
    reference implementation calls.
    """
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.where(norms == 0.0, 1.0, norms)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(dist, _SELF)
    return dist


def _relabel(labels: NDArray[np.int64]) -> NDArray[np.int64]:
    """Renumber cluster ids 0, 1, ... in order of first appearance (a canonical labelling)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64)


def _cluster_means(x: NDArray[np.float64], labels: NDArray[np.int64]) -> NDArray[np.float64]:
    """Mean of the original rows of ``x`` in each cluster ``0..labels.max()``."""
    k = int(labels.max()) + 1
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    means: NDArray[np.float64] = sums / counts[:, None]
    return means


def first_neighbour_partition(x: NDArray[np.float64]) -> NDArray[np.int64]:
    """One FINCH step: link each row to its cosine-nearest row; components are the clusters.

    Rows ``i`` and ``j`` are linked when ``j`` is ``i``'s first neighbour, ``i`` is ``j``'s, or
    both share a first neighbour (the paper's Eq. 1; for the components the third rule adds
    nothing to the first two). Ties go to the lowest index, as ``numpy.argmin``.

    Args:
        x: ``(n, d)`` float rows, ``n >= 1``.

    Returns:
        ``(n,)`` int64 cluster ids numbered by first appearance.
    """
    n = x.shape[0]
    dist = _cosine_distances(x)
    nearest = np.argmin(dist, axis=1)
    link = np.zeros((n, n), dtype=bool)
    link[np.arange(n), nearest] = True
    link[np.arange(n), np.arange(n)] = False
    _, labels = connected_components(link, directed=True, connection="weak", return_labels=True)
    return _relabel(np.asarray(labels, dtype=np.int64))


def finch(data: NDArray[np.floating] | Tensor) -> NDArray[np.int64]:
    """All FINCH partitions of ``data`` under cosine distance, finest first.

    Level 0 is :func:`first_neighbour_partition` of the rows. Each further level clusters the
    previous level's cluster means (means of the *original* rows) and maps the new ids back to
    the rows. As in the reference implementation, the recursion stops when a level would merge
    everything into one cluster or merges nothing, and **that last level is not kept**: the
    coarsest returned partition has one cluster only when level 0 already has one. The
    reference's ``ensure_early_exit`` distance threshold is not offered: FedBCS turns it off.

    Args:
        data: ``(n, d)`` float rows (numpy array or tensor), ``n >= 1``, finite.

    Returns:
        ``(n, L)`` int64, column ``l`` the cluster id of each row at level ``l`` (ids numbered
        by first appearance), like ``finch-clust``'s ``c`` matrix.

    Raises:
        ValueError: ``data`` not 2-D, empty, or not finite.
    """
    x = np.asarray(data.detach().cpu().double() if isinstance(data, Tensor) else data, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"finch expects data of shape (n, d) with n >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("finch got non-finite values in data; cluster finite prototypes only")
    columns = [first_neighbour_partition(x)]
    while True:
        merged = first_neighbour_partition(_cluster_means(x, columns[-1]))
        count, previous = int(merged.max()) + 1, int(columns[-1].max()) + 1
        if count == 1 or count >= previous:
            break
        columns.append(_relabel(merged[columns[-1]]))
    return np.stack(columns, axis=1)


def coarsest_cluster_means(prototypes: Tensor) -> Tensor:
    """Means of FINCH's coarsest partition of ``prototypes``, as FedBCS's server computes them.

    Args:
        prototypes: ``(n, C)`` float, one prototype per client, ``n >= 1``.

    Returns:
        ``(K, C)`` cluster means in the dtype and device of ``prototypes``, ordered by each
        cluster's first member; ``prototypes`` itself (detached) when ``n == 1``.

    Raises:
        ValueError: ``prototypes`` is not ``(n, C)`` with ``n >= 1``, or not finite.
    """
    if prototypes.ndim != 2 or prototypes.shape[0] == 0:
        raise ValueError(f"prototypes must have shape (n_clients, C) with n >= 1, got {tuple(prototypes.shape)}")
    flat = prototypes.detach()
    if flat.shape[0] == 1:
        return flat.clone()
    labels = torch.from_numpy(finch(flat)[:, -1]).to(flat.device)
    k = int(labels.max()) + 1
    sums = torch.zeros(k, flat.shape[1], dtype=torch.float64, device=flat.device)
    sums.index_add_(0, labels, flat.double())
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    return (sums / counts[:, None]).to(flat.dtype)


def aggregate_prototypes(
    client_prototypes: Sequence[Mapping[L, Mapping[C, Tensor]]],
) -> dict[L, dict[C, Tensor]]:
    """FedBCS's server rule: cluster each (level, class)'s client prototypes, keep the means.

    Args:
        client_prototypes: one mapping per client, ``{level: {class: (C_level,) prototype}}``;
            a client lists only the classes it saw. Clients are taken in the given order.

    Returns:
        ``{level: {class: (K, C_level)}}``, the coarsest FINCH partition's cluster means of the
        clients that hold that (level, class); ``K == 1`` with the prototype itself when one
        client holds it. Levels and classes appear in first-seen order.

    Raises:
        ValueError: a prototype is not 1-D, or the clients disagree on a level's width.
    """
    gathered: dict[L, dict[C, list[Tensor]]] = {}
    for client, levels in enumerate(client_prototypes):
        for level, classes in levels.items():
            for cls, proto in classes.items():
                if proto.ndim != 1:
                    raise ValueError(
                        f"client {client}, level {level!r}, class {cls!r}: a prototype must be 1-D (C,), "
                        f"got shape {tuple(proto.shape)}"
                    )
                gathered.setdefault(level, {}).setdefault(cls, []).append(proto)
    result: dict[L, dict[C, Tensor]] = {}
    for level, per_class in gathered.items():
        result[level] = {}
        for cls, protos in per_class.items():
            widths = sorted({p.shape[0] for p in protos})
            if len(widths) > 1:
                raise ValueError(f"level {level!r}, class {cls!r}: clients sent prototypes of widths {widths}")
            result[level][cls] = coarsest_cluster_means(torch.stack(protos))
    return result
