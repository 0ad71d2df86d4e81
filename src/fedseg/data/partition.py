"""Partition one single-source dataset into N simulated sites, reproducibly.

The unit is a *group* (patient, video; the case itself when there is no group column), so one
patient never ends up at two sites. Three schemes:

* ``iid``: groups shuffled and dealt round-robin, so site sizes differ by at most one group.
* ``dirichlet`` (quantity skew): site shares ``q ~ Dir(alpha * 1_N)``, group counts by largest
  remainder of ``q * n``; small ``alpha`` gives very unequal sites.
* ``foreground`` (foreground-size skew, the segmentation analogue of the label-distribution skew of
  Hsu et al. 2019): groups are binned into ``bins`` equal-count quantiles of foreground fraction;
  every bin is spread over the sites with its own ``Dir(alpha * 1_N)`` proportions. Small
  ``alpha`` gives sites that see mostly small or mostly large lesions; large ``alpha`` tends to IID.

Every site gets at least ``min_groups`` groups (moved one at a time from the largest site,
deterministically). All randomness comes from one ``numpy.random.default_rng`` seeded with the
seed and the scheme name, so the same seed gives the same partition on every machine.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from fedseg.config import PartitionConfig
from fedseg.data.base import DataError

__all__ = ["site_names", "partition_units", "iid_partition", "dirichlet_partition", "foreground_partition"]


def site_names(cfg: PartitionConfig) -> list[str]:
    """The simulated sites' names: ``cfg.site_names`` or ``site0, site1, ...``."""
    return list(cfg.site_names) if cfg.site_names is not None else [f"site{i}" for i in range(cfg.num_sites)]


def _rng(seed: int, method: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & ((1 << 63) - 1), zlib.crc32(method.encode("utf-8"))])


def _largest_remainder(shares: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``shares * n`` (ties to the lower index)."""
    raw = shares / shares.sum() * n
    counts: np.ndarray = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _ensure_minimum(assign: np.ndarray, num_sites: int, minimum: int) -> np.ndarray:
    """Move units from the largest site until every site has ``minimum`` of them."""
    assign = assign.copy()
    counts = np.bincount(assign, minlength=num_sites)
    for site in range(num_sites):
        while counts[site] < minimum:
            donor = int(np.argmax(counts))
            unit = int(np.flatnonzero(assign == donor)[-1])
            assign[unit] = site
            counts[donor] -= 1
            counts[site] += 1
    return assign


def iid_partition(n: int, num_sites: int, rng: np.random.Generator) -> np.ndarray:
    """Site index of each of ``n`` units: shuffled, dealt round-robin."""
    assign = np.empty(n, dtype=np.int64)
    assign[rng.permutation(n)] = np.arange(n) % num_sites
    return assign


def dirichlet_partition(n: int, num_sites: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Site index of each of ``n`` units with Dirichlet(alpha) site sizes (quantity skew)."""
    shares = rng.dirichlet(np.full(num_sites, alpha))
    counts = _largest_remainder(shares, n)
    assign = np.repeat(np.arange(num_sites), counts)
    return assign[np.argsort(rng.permutation(n), kind="stable")]


def foreground_partition(
    sizes: np.ndarray, num_sites: int, alpha: float, bins: int, rng: np.random.Generator
) -> np.ndarray:
    """Site index of each unit with foreground-size skew.

    Args:
        sizes: ``(n,)`` foreground fraction (or volume) of every unit.
        num_sites: number of sites.
        alpha: Dirichlet concentration per bin.
        bins: number of equal-count size quantiles.
        rng: the generator.
    """
    n = len(sizes)
    assign = np.empty(n, dtype=np.int64)
    by_size = np.argsort(sizes, kind="stable")
    for members in np.array_split(by_size, min(bins, n)):
        shares = rng.dirichlet(np.full(num_sites, alpha))
        counts = _largest_remainder(shares, len(members))
        assign[rng.permutation(members)] = np.repeat(np.arange(num_sites), counts)
    return assign


def partition_units(
    units: Sequence[str],
    cfg: PartitionConfig,
    seed: int,
    foreground: Mapping[str, float] | None = None,
) -> dict[str, list[str]]:
    """Assign units (groups) to simulated sites.

    Args:
        units: the distinct group values (order irrelevant: they are sorted first).
        cfg: scheme, number of sites, alpha, bins, names, seed.
        seed: run seed (``cfg.seed`` overrides it).
        foreground: foreground fraction per unit (needed for ``foreground``).

    Returns:
        site name -> its units, sorted.

    Raises:
        DataError: fewer units than ``num_sites * min_groups``, or foreground sizes missing.
    """
    ordered = sorted(set(units))
    n, k, min_groups = len(ordered), cfg.num_sites, cfg.min_groups
    if n < k * min_groups:
        raise DataError(f"data.partition: {n} group(s) cannot fill {k} sites with at least {min_groups} each; "
                        "lower data.partition.num_sites")
    rng = _rng(cfg.seed if cfg.seed is not None else seed, cfg.method)
    if cfg.method == "iid":
        assign = iid_partition(n, k, rng)
    elif cfg.method == "dirichlet":
        assign = dirichlet_partition(n, k, cfg.alpha, rng)
    else:
        if foreground is None or any(u not in foreground for u in ordered):
            raise DataError("data.partition.method=foreground needs the foreground size of every group")
        sizes = np.array([foreground[u] for u in ordered], dtype=np.float64)
        assign = foreground_partition(sizes, k, cfg.alpha, cfg.bins or k, rng)
    assign = _ensure_minimum(assign, k, min_groups)
    names = site_names(cfg)
    return {names[i]: [u for u, a in zip(ordered, assign) if a == i] for i in range(k)}
