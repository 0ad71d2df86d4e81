"""Deterministic train/val/test splits by group, and split files (``splits.json``).

A split is made per site over the unique values of the group column (patient, video...), so one
group never lands in two splits. The same file format is written into every run directory and
accepted back through ``data.split_file``::

    {"format": "fedseg-splits/1", "seed": 0,
     "sites": {"<site>": {"train": ["<case id>", ...], "val": [...], "test": [...]}}}
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedseg.config import SplitConfig
from fedseg.data.base import DataError, FederatedData
from fedseg.io.atomic import atomic_write_text

__all__ = [
    "SPLITS",
    "SPLIT_FORMAT",
    "SplitAssignment",
    "split_counts",
    "split_groups",
    "splits_of",
    "write_splits",
    "read_split_file",
]

SPLITS = ("train", "val", "test")
SPLIT_FORMAT = "fedseg-splits/1"
SplitAssignment = dict[str, dict[str, list[str]]]
"""site -> split (train/val/test) -> case ids."""


def split_counts(n: int, split: SplitConfig) -> tuple[int, int, int]:
    """Numbers of train/val/test items (cases or groups) for ``n`` items.

    Fractions are rounded; train always gets at least 1 item, and val/test get at least 1
    when their fraction is > 0 and ``n >= 3``.

    Args:
        n: number of items, >= 0.
        split: the fractions.

    Returns:
        ``(n_train, n_val, n_test)`` summing to ``n``.
    """
    if n <= 0:
        return 0, 0, 0
    n_val = int(round(n * split.val))
    n_test = int(round(n * split.test))
    if n >= 3:
        if split.val > 0:
            n_val = max(1, n_val)
        if split.test > 0:
            n_test = max(1, n_test)
    while n - n_val - n_test < 1:
        floor_val = 1 if (n >= 3 and split.val > 0) else 0
        floor_test = 1 if (n >= 3 and split.test > 0) else 0
        if n_test - floor_test >= n_val - floor_val and n_test > floor_test:
            n_test -= 1
        elif n_val > floor_val:
            n_val -= 1
        elif n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def split_groups(
    groups: Sequence[str], split: SplitConfig, seed: int, site: str
) -> tuple[set[str], set[str], set[str]]:
    """Deterministically assign unique group values to train/val/test.

    The sorted unique groups are shuffled by ``numpy.random.default_rng`` seeded with
    ``seed`` and ``zlib.crc32(site)`` (stable across processes, unlike ``hash``).

    Args:
        groups: group value of every item (duplicates allowed).
        split: the fractions, applied to the number of unique groups.
        seed: run seed.
        site: site name, so that sites get different shuffles.

    Returns:
        The train, val and test group sets (disjoint).
    """
    unique = sorted(set(groups))
    rng = np.random.default_rng([int(seed) & ((1 << 63) - 1), zlib.crc32(site.encode("utf-8"))])
    order = [unique[i] for i in rng.permutation(len(unique))]
    n_train, n_val, _ = split_counts(len(unique), split)
    return set(order[:n_train]), set(order[n_train : n_train + n_val]), set(order[n_train + n_val :])


def splits_of(data: FederatedData) -> SplitAssignment:
    """The case ids of every site's train/val/test split."""
    return {s.name: {"train": list(s.train.ids), "val": list(s.val.ids), "test": list(s.test.ids)} for s in data.sites}


def write_splits(path: Path, data: FederatedData, seed: int) -> None:
    """Write ``splits.json`` (atomically) so the run's splits can be inspected and reused."""
    payload = {"format": SPLIT_FORMAT, "seed": int(seed), "sites": splits_of(data)}
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def _ids(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise DataError(f"{where}: expected a list of case ids, got {type(value).__name__}")
    return [str(v) for v in value]


def read_split_file(path: Path) -> SplitAssignment:
    """Read a split file: ``{"sites": {site: {train|val|test: [ids]}}}`` or the bare site mapping.

    Raises:
        DataError: missing or malformed file, unknown split names, or an id in two splits of a site.
    """
    if not path.is_file():
        raise DataError(f"data.split_file {path}: no such file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"data.split_file {path}: not valid JSON ({exc})") from None
    sites = raw.get("sites", raw) if isinstance(raw, Mapping) else None
    if not isinstance(sites, Mapping) or not sites:
        raise DataError(f"data.split_file {path}: expected {{'sites': {{site: {{train: [...], val: [...], test: [...]}}}}}}")
    out: SplitAssignment = {}
    for site, parts in sites.items():
        if not isinstance(parts, Mapping):
            raise DataError(f"data.split_file {path}: site {site!r} must map train/val/test to id lists")
        unknown = sorted(set(parts) - set(SPLITS))
        if unknown:
            raise DataError(f"data.split_file {path}: site {site!r} has unknown split(s) {unknown}; allowed: train, val, test")
        out[str(site)] = {k: _ids(parts.get(k, []), f"data.split_file {path}: {site}.{k}") for k in SPLITS}
        seen: dict[str, str] = {}
        for k in SPLITS:
            for case in out[str(site)][k]:
                if case in seen:
                    raise DataError(f"data.split_file {path}: case {case!r} of site {site!r} is in both {seen[case]} "
                                    f"and {k}")
                seen[case] = k
    return out
