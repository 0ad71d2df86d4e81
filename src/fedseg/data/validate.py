"""Checks on an in-memory federation, run before any training.

:func:`fedseg.data.build.build_federated_data` already refuses a dataset with file problems (all
of them at once). These checks cover what every source shares, including data built in code
(tests, the synthetic generator, label corruption): empty sites or training splits, tensors of the
wrong shape or dtype, non-finite intensities, labels outside ``[0, num_classes)``.
"""

from __future__ import annotations

import logging

import torch

from fedseg.data.base import DataError, FederatedData, Problem, SegmentationSet
from fedseg.data.stream_check import streamed_set_problems

__all__ = ["federation_problems", "validate_federation"]

log = logging.getLogger(__name__)


def _set_problems(site: str, split: str, s: SegmentationSet, data: FederatedData) -> list[Problem]:
    if not s.in_memory:  # streamed from disk: checked case by case
        return streamed_set_problems(site, split, s, data)
    where = f"site {site}, {split} split"
    n = len(s)
    problems = []
    expected = 2 + data.spatial_dims
    if s.images.ndim != expected or s.images.shape[1] != data.in_channels:
        problems.append(Problem(where, f"images of shape {tuple(s.images.shape)}; expected (N, {data.in_channels}, "
                                       f"*spatial) with {data.spatial_dims} spatial axes", site))
    masks = s.masks
    if masks is None:
        # a weakly-supervised training split holds weak labels instead (fedseg.data.supervision)
        if s.supervision == "pixel" or split != "train":
            problems.append(Problem(where, f"no masks, but the split is {s.supervision}-supervised; only the train "
                                           "split of a box/image site may lack masks", site))
    elif masks.shape[0] != n or masks.ndim != expected or masks.shape[1] != 1 or \
            masks.shape[2:] != s.images.shape[2:]:
        problems.append(Problem(where, f"masks of shape {tuple(masks.shape)} do not match images "
                                       f"{tuple(s.images.shape)} (expected (N, 1, *spatial))", site))
    for key, value in s.weak.items():
        if value.shape[0] != n:
            problems.append(Problem(where, f"weak label {key!r} has {value.shape[0]} entries for {n} images", site))
    if len(s.ids) != n:
        problems.append(Problem(where, f"{len(s.ids)} ids for {n} images", site))
    if n == 0:
        return problems
    bad_values = ~torch.isfinite(s.images.flatten(1)).all(1)
    if bool(bad_values.any()):
        ids = [s.ids[i] if i < len(s.ids) else str(i) for i in torch.nonzero(bad_values).flatten().tolist()]
        problems.append(Problem(where, f"NaN/inf intensities in case(s) {', '.join(ids[:10])}", site))
    if masks is None:
        return problems
    if masks.dtype != torch.int64:
        problems.append(Problem(where, f"masks are {masks.dtype}; expected torch.int64 class indices", site))
    low, high = int(masks.min()), int(masks.max())
    if low < 0 or high >= data.num_classes:
        problems.append(Problem(where, f"mask values {low}..{high} outside [0, {data.num_classes}) (num_classes)", site))
    return problems


def federation_problems(data: FederatedData) -> list[Problem]:
    """Every problem of ``data``: errors (empty site or training split, shapes, dtypes, NaN/inf,
    labels) and warnings (empty val/test split)."""
    problems: list[Problem] = []
    if not data.sites:
        return [Problem("data", "no site")]
    names = [s.name for s in data.sites]
    if len(set(names)) != len(names):
        problems.append(Problem("data", f"duplicated site names: {', '.join(names)}"))
    for site in data.sites:
        sets = {"train": site.train, "val": site.val, "test": site.test}
        total = sum(len(s) for s in sets.values())
        if total == 0:
            problems.append(Problem(f"site {site.name}", "no case at all (empty site)", site.name))
            continue
        for split, s in sets.items():
            problems += _set_problems(site.name, split, s, data)
            if len(s) == 0:
                problems.append(Problem(f"site {site.name}", f"empty {split} split", site.name,
                                        "error" if split == "train" else "warning"))
    return problems


def validate_federation(data: FederatedData) -> None:
    """Raise one :class:`DataError` naming every error of ``data``; log the warnings.

    Raises:
        DataError: any error from :func:`federation_problems`, all listed.
    """
    problems = federation_problems(data)
    for p in problems:
        if p.severity == "warning":
            log.warning("%s", p)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataError.from_problems(errors, header="the data cannot be trained on")
