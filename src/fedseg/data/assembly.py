"""Split assembly for real folders: cases -> sites -> train/val/test -> sets (streamed from the
cache).

The stages after reading (:mod:`fedseg.data.folder`): the cases are grouped into sites (the
folders, or the simulated sites of ``data.partition``), every site is split by group
(``data.split``), by a split file, or entirely into test, and each split becomes a
:class:`SegmentationSet` whose cases stay in the on-disk cache (:func:`make_set`). Files-mode weak
sites are planned here before anything is read (:func:`plan_weak`): which of their cases are
training cases follows from names alone, so their masks are never opened. Problems are collected
with their site, never raised one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedseg.config import DataConfig
from fedseg.data.base import DataError, FederatedData, Problem, SegmentationSet, SiteData
from fedseg.data.cache import StoredCase
from fedseg.data.cases import ListCases
from fedseg.data.check import MAX_LISTED, CaseSummary, DatasetReport, Maskless, Splits, problems_of
from fedseg.data.layout import SiteIndex
from fedseg.data.partition import partition_units
from fedseg.data.slices import volume_ids_to_slices
from fedseg.data.splits import SPLITS, SplitAssignment, read_split_file, split_groups
from fedseg.data.supervision import SupervisionKind, files_mode_sites, weak_training_split
from fedseg.data.weak_label_files import WeakLabels, read_site_weak_labels

__all__ = [
    "WeakPlan",
    "folder_label_names",
    "maskless",
    "plan_weak",
    "form_sites",
    "split_sites",
    "make_set",
    "build_federation",
]

WeakPlan = dict[str, tuple[set[str], WeakLabels]]
"""Files-mode weak site -> (its training case ids, its label file)."""


def folder_label_names(num_classes: int) -> list[str]:
    """Default label names: ``background, foreground`` or ``background, class1, ...``."""
    if num_classes == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class{k}" for k in range(1, num_classes)]


def maskless(index: list[SiteIndex]) -> Maskless:
    """Every site's images without mask (case id -> group)."""
    return {s.name: {c.case_id: c.group for c in s.cases if c.mask is None} for s in index}


def plan_weak(index: list[SiteIndex], cfg: DataConfig, seed: int, dims: int, all_to_test: bool) -> tuple[
    WeakPlan, list[Problem]
]:
    """Which cases are training cases of a files-mode weak site, decided from names only (the split
    needs no file contents), so that their masks are never opened; and their label files. Images
    without mask are always training cases (:func:`split_sites`)."""
    sites = {} if all_to_test else files_mode_sites(cfg, [s.name for s in index])
    if not sites:
        return {}, []
    placeholders = {s.name: [CaseSummary(c, (), (), 0.0) for c in s.cases] for s in index if s.name in sites}
    # its problems are reported by the real split
    planned, _ = split_sites(placeholders, cfg, seed, False, maskless(index))
    plan: WeakPlan = {}
    problems: list[Problem] = []
    for name, kind in sites.items():
        try:
            labels = read_site_weak_labels(cfg, name, kind, dims)
        except DataError as exc:
            problems += problems_of(exc, name)
            continue
        plan[name] = ({c.files.case_id for c in planned.get(name, {}).get("train", [])}, labels)
    return plan, problems


def form_sites(
    summaries: list[CaseSummary], site_order: list[str], cfg: DataConfig, seed: int
) -> tuple[dict[str, list[CaseSummary]], list[Problem]]:
    """Site name -> its cases: the folders, or the simulated sites of ``data.partition``."""
    if cfg.partition is None:
        return {name: [s for s in summaries if s.files.site == name] for name in site_order}, []
    if len(site_order) != 1:
        return {}, [Problem("data.partition", f"splits a single-source dataset, but data.root has {len(site_order)} "
                                              f"sites ({', '.join(site_order)}); select one with data.sites")]
    groups: dict[str, list[CaseSummary]] = {}
    for s in summaries:
        groups.setdefault(s.files.group, []).append(s)
    foreground = {g: float(np.mean([c.foreground for c in cases])) for g, cases in groups.items()}
    try:
        assignment = partition_units(list(groups), cfg.partition, seed, foreground)
    except DataError as exc:
        return {}, problems_of(exc, site_order[0])
    return {name: [c for g in units for c in groups[g]] for name, units in assignment.items()}, []


def split_sites(
    sites: dict[str, list[CaseSummary]], cfg: DataConfig, seed: int, all_to_test: bool,
    no_masks: Maskless | None = None,
) -> tuple[Splits, list[Problem]]:
    """Split every site into train/val/test: by group (``data.split``), by ``data.split_file``, or
    everything into test (``all_to_test``).

    ``no_masks``: images without mask (files-mode weak sites) can only be training cases. By
    group, every group holding one goes to train and the configured fractions split the other
    groups (all of whose cases have masks), so a patient never straddles train and val/test; a
    site without any mask has empty val/test. A split file that puts one into val/test is an
    error; ``all_to_test`` leaves them out (with a warning).
    """
    no_masks = no_masks or {}
    problems: list[Problem] = []
    out: Splits = {}
    fixed: SplitAssignment | None = None
    if cfg.split_file is not None and not all_to_test:
        try:
            fixed = read_split_file(Path(cfg.split_file))
        except DataError as exc:
            return {}, problems_of(exc, "")
        unknown = sorted(set(fixed) - set(sites))
        if unknown:
            problems.append(Problem(f"data.split_file {cfg.split_file}", f"site(s) {', '.join(unknown)} are not in "
                                                                          f"the data (sites: {', '.join(sites)})"))
    for name, cases in sites.items():
        no_mask = no_masks.get(name, {})
        cases = [c for c in cases if not (all_to_test and c.files.case_id in no_mask)]
        by_id = {c.files.case_id: c for c in cases}
        if all_to_test:
            if no_mask:
                problems.append(Problem(f"site {name}", f"{len(no_mask)} image(s) without mask left out (evaluating "
                                        f"a site needs masks): {', '.join(sorted(no_mask)[:MAX_LISTED])}", name,
                                        "warning"))
            out[name] = {"train": [], "val": [], "test": sorted(cases, key=lambda c: c.files.case_id)}
            continue
        if fixed is not None:
            parts = fixed.get(name)
            if parts is None:
                problems.append(Problem(f"data.split_file {cfg.split_file}", f"has no entry for site {name!r}", name))
                out[name] = {k: [] for k in SPLITS}
                continue
            parts = volume_ids_to_slices(parts, cases)  # a volume id stands for all its slices
            listed = {i for k in SPLITS for i in parts[k]}
            unmasked = sorted(i for k in SPLITS if k != "train" for i in parts[k] if i in no_mask)
            if unmasked:
                problems.append(Problem(f"data.split_file {cfg.split_file}", f"site {name!r}: case(s) "
                                        f"{', '.join(unmasked[:MAX_LISTED])} have no mask file but are listed under "
                                        "val/test (an image without mask can only be a training case)", name))
            missing = sorted(listed - set(by_id) - set(unmasked))
            if missing:
                problems.append(Problem(f"data.split_file {cfg.split_file}", f"site {name!r}: case id(s) "
                                        f"{', '.join(missing[:MAX_LISTED])} not found or not readable", name))
            left_out = sorted((set(by_id) | set(no_mask)) - listed)
            if left_out:
                problems.append(Problem(f"data.split_file {cfg.split_file}", f"site {name!r}: {len(left_out)} case(s)"
                                        f" not in the split file are left out: {', '.join(left_out[:MAX_LISTED])}",
                                        name, "warning"))
            out[name] = {k: [by_id[i] for i in parts[k] if i in by_id and (k == "train" or i not in no_mask)]
                         for k in SPLITS}
            continue
        train_only = set(no_mask.values())
        chosen = split_groups([c.files.group for c in cases if c.files.group not in train_only], cfg.split, seed, name)
        assigned = (chosen[0] | train_only, chosen[1], chosen[2])
        out[name] = {
            k: sorted((c for c in cases if c.files.group in part), key=lambda c: c.files.case_id)
            for k, part in zip(SPLITS, assigned, strict=True)
        }
    return out, problems


def _make_weak_set(cases: Sequence[CaseSummary], kind: SupervisionKind) -> SegmentationSet:
    """A weak site's training split: images, no masks, the weak labels (``fedseg.data.supervision``)."""
    done = [c.case for c in cases if c.case is not None]
    return weak_training_split(
        images=torch.from_numpy(np.stack([a.image for a in done])),
        spacing=torch.tensor([a.spacing for a in done], dtype=torch.float64),
        ids=[c.files.case_id for c in cases],
        kind=kind,
        labels=np.stack([c.weak[1] for c in cases if c.weak is not None]),
    )


def make_set(cases: Sequence[CaseSummary], channels: int, shape: tuple[int, ...]) -> SegmentationSet:
    """One split of the preprocessed cases (``(0, channels, *shape)`` tensors when empty).

    Cases held by the on-disk cache (:class:`~fedseg.data.cache.StoredCase`) stay there and are
    streamed case by case (:class:`~fedseg.data.cases.ListCases`, memory-mapped ``.npy``); cases in
    memory (the cache is off) are stacked when they share a shape, else kept as a list.
    """
    dims = len(shape)
    kinds = {c.weak[0] for c in cases if c.weak is not None}
    if kinds:
        if len(kinds) > 1 or any(c.weak is None for c in cases):
            raise RuntimeError("internal: a split mixes weak and pixel-labelled cases")
        return _make_weak_set(cases, kinds.pop())
    arrays = [c.case for c in cases]
    if any(a is None or a.mask is None for a in arrays):
        raise RuntimeError("internal: a case was summarised without its preprocessed arrays")
    done = [a for a in arrays if a is not None]
    ids = [c.files.case_id for c in cases]
    if not done:
        return SegmentationSet(images=torch.zeros((0, channels, *shape), dtype=torch.float32),
                               masks=torch.zeros((0, 1, *shape), dtype=torch.int64),
                               spacing=torch.zeros((0, dims), dtype=torch.float64), ids=ids)
    spacing = torch.tensor([a.spacing for a in done], dtype=torch.float64).reshape(len(done), dims)
    shapes = [tuple(int(n) for n in a.image.shape[1:]) for a in done]
    stored = [a for a in done if isinstance(a, StoredCase) and a.mask_path is not None]
    if len(stored) == len(done):
        store = ListCases([a.image_path for a in stored], [a.mask_path for a in stored if a.mask_path is not None],
                          shapes, channels)
        return SegmentationSet(cases=store, spacing=spacing, ids=ids)
    if any(isinstance(a, StoredCase) for a in done):
        raise RuntimeError("internal: a split mixes cached and in-memory cases")
    masks = [a.mask for a in done if a.mask is not None]
    if len(set(shapes)) > 1:
        return SegmentationSet(cases=ListCases([a.image for a in done], masks, shapes, channels), spacing=spacing,
                               ids=ids)
    return SegmentationSet(images=torch.from_numpy(np.stack([a.image for a in done])),
                           masks=torch.from_numpy(np.stack(masks)[:, None]), spacing=spacing, ids=ids)


def build_federation(report: DatasetReport, splits: Splits, cfg: DataConfig) -> FederatedData:
    """The in-memory federation of a checked dataset.

    Raises:
        DataError: the report's errors, all together, or no usable case at all.
    """
    if report.errors:
        header = f"data.root {report.root}" if report.root is not None else "data"
        raise DataError.from_problems(report.errors, header=header)
    first = next((c for parts in splits.values() for k in SPLITS for c in parts[k]), None)
    if first is None:
        raise DataError(f"data.root {report.root}: no usable case")
    shape = tuple(first.shape)
    sites = [
        SiteData(name=name, **{k: make_set(parts[k], cfg.channels, shape) for k in SPLITS})
        for name, parts in splits.items()
    ]
    return FederatedData(
        sites=sites,
        spatial_dims=report.spatial_dims,
        in_channels=cfg.channels,
        num_classes=cfg.num_classes,
        label_names=list(cfg.label_names) if cfg.label_names else folder_label_names(cfg.num_classes),
    )
