"""Reader for real multi-site folders, 2D and 3D: ``<root>/<site>/{images,masks}/``.

Pipeline (every stage collects problems with their file names; nothing stops at the first):

1. :mod:`fedseg.data.layout` pairs images (one file, or ``<case>_0000 ...`` channel files) with
   masks and attaches ``metadata.csv`` rows (group column).
2. Every case is read (:mod:`fedseg.io`) and preprocessed (:mod:`fedseg.data.preprocess`), or taken
   from the on-disk cache (:mod:`fedseg.data.cache`) without decoding anything.
3. A single-source dataset can be partitioned into simulated sites (:mod:`fedseg.data.partition`).
4. Each site is split into train/val/test by group (:mod:`fedseg.data.splits`) or by a split file.
5. All cases must share one array shape (the in-memory :class:`SegmentationSet` stacks them).

:func:`check_dataset` runs stages 1-4 without keeping arrays (``fedseg data check``);
:func:`load_folder_federation` runs them all and raises one :class:`DataError` listing every
error, so ``fedseg run`` refuses to start with the same list ``fedseg data check`` prints.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from fedseg.config import DataConfig
from fedseg.data.base import DataError, FederatedData, Problem, SegmentationSet, SiteData
from fedseg.data.cache import CaseCache, default_cache_dir
from fedseg.data.layout import CaseFiles, SiteIndex, discover_sites, index_dataset
from fedseg.data.partition import partition_units
from fedseg.data.preprocess import PreprocessedCase, check_case, foreground_fraction, planned_shape, preprocess_case
from fedseg.data.splits import SPLITS, SplitAssignment, read_split_file, split_counts, split_groups
from fedseg.data.supervision import (
    SupervisionKind,
    WeakKey,
    WeakLabels,
    box_volume,
    files_mode_sites,
    read_weak_labels,
    weak_split,
)
from fedseg.io import IMAGE_2D_SUFFIXES, read_image, read_mask

__all__ = [
    "IMAGE_SUFFIXES",
    "CaseSummary",
    "SiteSummary",
    "DatasetReport",
    "split_counts",
    "split_groups",
    "discover_sites",
    "check_dataset",
    "load_site_folder",
    "load_folder_federation",
    "folder_label_names",
]

IMAGE_SUFFIXES = IMAGE_2D_SUFFIXES
_MAX_LISTED = 10
log = logging.getLogger(__name__)


def folder_label_names(num_classes: int) -> list[str]:
    """Default label names: ``background, foreground`` or ``background, class1, ...``."""
    if num_classes == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class{k}" for k in range(1, num_classes)]


@dataclass
class CaseSummary:
    """One case that read and checked without error.

    Attributes:
        files: its files, site and group.
        shape: final spatial shape (after preprocessing).
        labels: mask file values present (tabulated in check mode only; empty when loading).
        foreground: fraction of non-background voxels in the file mask.
        case: the preprocessed arrays (``None`` in check mode).
        weak: a weak site's training case (``data.weak_labels.source: files``): its kind and label,
            the box mask on the training grid ``(*spatial)`` uint8 or the class vector; its mask
            file was never opened (``case.mask`` is None).
    """

    files: CaseFiles
    shape: tuple[int, ...]
    labels: tuple[int, ...]
    foreground: float
    case: PreprocessedCase | None = None
    weak: tuple[SupervisionKind, np.ndarray] | None = None


@dataclass
class SiteSummary:
    """A (possibly simulated) site after splitting: what ``fedseg data check`` tabulates."""

    name: str
    cases: int = 0
    groups: int = 0
    splits: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in SPLITS})
    labels: tuple[int, ...] = ()
    shapes: tuple[tuple[int, ...], ...] = ()


@dataclass
class DatasetReport:
    """Everything a dataset check found."""

    root: Path | None
    spatial_dims: int
    problems: list[Problem]
    sites: list[SiteSummary]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def _cache(cfg: DataConfig) -> CaseCache | None:
    if not cfg.cache:
        return None
    return CaseCache(cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir(), cfg)


def _problems_of(exc: DataError, site: str) -> list[Problem]:
    found = exc.problems or [Problem("", str(exc))]
    return [replace(p, site=site) for p in found]


def _read_case(files: CaseFiles, cfg: DataConfig, keep: bool, cache: CaseCache | None) -> tuple[
    CaseSummary | None, list[Problem]
]:
    """Read, check and (``keep``) preprocess one case; every problem of its files together."""
    if files.mask is None:  # only a weak site's training images may lack a mask (_read_all)
        return None, [Problem(str(files.images[0]), "image without mask", files.site)]
    key = None
    if keep and cache is not None:
        try:
            key = cache.key(files)
        except OSError as exc:
            return None, [Problem(str(files.mask), f"cannot stat ({exc})", files.site)]
        cached = cache.load(key)
        if cached is not None and cached.mask is not None:
            # file label values are only tabulated by check_dataset, which reads the files
            return CaseSummary(files, cached.image.shape[1:], (), cached.foreground or 0.0, cached), []
    problems: list[Problem] = []
    image = mask = None
    try:
        image = read_image(files.images, channels=cfg.channels)
    except DataError as exc:
        problems += _problems_of(exc, files.site)
    try:
        mask = read_mask(files.mask)
    except DataError as exc:
        problems += _problems_of(exc, files.site)
    if image is None or mask is None:
        return None, problems
    problems = [replace(p, site=files.site) for p in check_case(image, mask, cfg)]
    if problems:
        return None, problems
    if not keep:
        labels = tuple(int(v) for v in np.unique(mask.array))
        try:
            shape = planned_shape(image, cfg)
        except DataError as exc:
            return None, _problems_of(exc, files.site)
        return CaseSummary(files, shape, labels, foreground_fraction(mask.array, cfg)), []
    try:
        case = preprocess_case(image, mask, cfg)
    except DataError as exc:
        return None, _problems_of(exc, files.site)
    if cache is not None and key is not None:
        cache.save(key, case)
    return CaseSummary(files, case.image.shape[1:], (), case.foreground or 0.0, case), []


def _read_weak_case(files: CaseFiles, cfg: DataConfig, keep: bool, labels: WeakLabels) -> tuple[
    CaseSummary | None, list[Problem]
]:
    """A weak site's training case: its image and weak label. The mask file is never opened, and the
    cache (which would hold the mask) is not used."""
    try:
        image = read_image(files.images, channels=cfg.channels)
        box = box_volume(labels, files.case_id, image) if labels.kind == SupervisionKind.BOX else None
        if box is None and files.case_id not in labels.classes:
            raise DataError(f"{labels.path}: no label for training image {files.case_id!r} (every training image of "
                            "an image-supervised site needs one)")
        if not keep:
            return CaseSummary(files, planned_shape(image, cfg), (), 0.0), []
        # the box is a 0/1 mask on the image grid: preprocess it like a mask, without the label map
        case = preprocess_case(image, box, cfg.model_copy(update={"label_map": None}))
    except DataError as exc:
        return None, _problems_of(exc, files.site)
    label = case.mask.astype(np.uint8) if case.mask is not None else labels.vector(files.case_id)
    return CaseSummary(files, case.image.shape[1:], (), 0.0, replace(case, mask=None), (labels.kind, label)), []


WeakPlan = dict[str, tuple[set[str], WeakLabels]]
"""Files-mode weak site -> (its training case ids, its label file)."""

Maskless = dict[str, dict[str, str]]
"""Site -> its images without mask (files-mode weak sites only): case id -> group."""


def _maskless(index: list[SiteIndex]) -> Maskless:
    return {s.name: {c.case_id: c.group for c in s.cases if c.mask is None} for s in index}


def _plan_weak(index: list[SiteIndex], cfg: DataConfig, seed: int, dims: int, all_to_test: bool) -> tuple[
    WeakPlan, list[Problem]
]:
    """Which cases are training cases of a files-mode weak site, decided from names only (the split
    needs no file contents), so that their masks are never opened; and their label files. Images
    without mask are always training cases (:func:`_split_sites`)."""
    sites = {} if all_to_test else files_mode_sites(cfg, [s.name for s in index])
    if not sites:
        return {}, []
    placeholders = {s.name: [CaseSummary(c, (), (), 0.0) for c in s.cases] for s in index if s.name in sites}
    # its problems are reported by the real split
    planned, _ = _split_sites(placeholders, cfg, seed, False, _maskless(index))
    root = Path(cfg.weak_labels.root if cfg.weak_labels.root is not None else cfg.root or ".")
    plan: WeakPlan = {}
    problems: list[Problem] = []
    for name, kind in sites.items():
        try:
            labels = read_weak_labels(root / name, kind, cfg, dims)
        except DataError as exc:
            problems += _problems_of(exc, name)
            continue
        plan[name] = ({c.files.case_id for c in planned.get(name, {}).get("train", [])}, labels)
    return plan, problems


def _read_all(cases: list[CaseFiles], cfg: DataConfig, keep: bool, weak: WeakPlan | None = None) -> tuple[
    list[CaseSummary], list[Problem]
]:
    cache = _cache(cfg) if keep else None
    weak = weak or {}

    def work(f: CaseFiles) -> tuple[CaseSummary | None, list[Problem]]:
        plan = weak.get(f.site)
        if plan is not None and f.case_id in plan[0]:
            return _read_weak_case(f, cfg, keep, plan[1])
        if f.mask is None:
            # not a training case (a split file or all_to_test put it elsewhere, or the site's label
            # file is unreadable): nothing to read; _split_sites or _plan_weak reports why
            return None, []
        return _read_case(f, cfg, keep, cache)

    workers = min(8, os.cpu_count() or 1)
    if len(cases) > 8 and workers > 1:
        # Decoding and MONAI transforms release the GIL, so threads scale; each worker then gets one
        # torch intra-op thread, otherwise workers x torch threads oversubscribe the cores (10x slower
        # resizes on a busy 2-core machine). Restored afterwards.
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(work, cases))
        finally:
            torch.set_num_threads(previous)
    else:
        results = [work(c) for c in cases]
    if cache is not None:
        log.info("preprocessed-case cache %s: %d hit(s), %d miss(es)", cache.directory, cache.hits, cache.misses)
    summaries = [s for s, _ in results if s is not None]
    return summaries, [p for _, found in results for p in found]


def _shape_problems(summaries: list[CaseSummary], root: Path, dims: int) -> list[Problem]:
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for s in summaries:
        by_shape.setdefault(tuple(s.shape), []).append(s.files.images[0].name)
    if len(by_shape) <= 1:
        return []

    def describe(shape: tuple[int, ...]) -> str:
        return f"{shape[1]}x{shape[0]} (WxH)" if dims == 2 else "x".join(str(n) for n in shape)

    detail = "; ".join(
        f"{describe(shape)}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)} files)"
        for shape, names in sorted(by_shape.items(), key=lambda kv: -len(kv[1]))
    )
    return [Problem(f"data.root {root}", f"images differ in size after preprocessing and no target shape is set "
                                         f"(data.image_size or data.preprocess.target_shape): {detail}")]


def _form_sites(
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
        return {}, _problems_of(exc, site_order[0])
    return {name: [c for g in units for c in groups[g]] for name, units in assignment.items()}, []


def _split_sites(
    sites: dict[str, list[CaseSummary]], cfg: DataConfig, seed: int, all_to_test: bool,
    maskless: Maskless | None = None,
) -> tuple[dict[str, dict[str, list[CaseSummary]]], list[Problem]]:
    """Split every site into train/val/test: by group (``data.split``), by ``data.split_file``, or
    everything into test (``all_to_test``).

    ``maskless``: images without mask (files-mode weak sites) can only be training cases. By
    group, every group holding one goes to train and the configured fractions split the other
    groups (all of whose cases have masks), so a patient never straddles train and val/test; a
    site without any mask has empty val/test. A split file that puts one into val/test is an
    error; ``all_to_test`` leaves them out (with a warning).
    """
    maskless = maskless or {}
    problems: list[Problem] = []
    out: dict[str, dict[str, list[CaseSummary]]] = {}
    fixed: SplitAssignment | None = None
    if cfg.split_file is not None and not all_to_test:
        try:
            fixed = read_split_file(Path(cfg.split_file))
        except DataError as exc:
            return {}, _problems_of(exc, "")
        unknown = sorted(set(fixed) - set(sites))
        if unknown:
            problems.append(Problem(f"data.split_file {cfg.split_file}", f"site(s) {', '.join(unknown)} are not in "
                                                                          f"the data (sites: {', '.join(sites)})"))
    for name, cases in sites.items():
        no_mask = maskless.get(name, {})
        cases = [c for c in cases if not (all_to_test and c.files.case_id in no_mask)]
        by_id = {c.files.case_id: c for c in cases}
        if all_to_test:
            if no_mask:
                problems.append(Problem(f"site {name}", f"{len(no_mask)} image(s) without mask left out (evaluating "
                                        f"a site needs masks): {', '.join(sorted(no_mask)[:_MAX_LISTED])}", name,
                                        "warning"))
            out[name] = {"train": [], "val": [], "test": sorted(cases, key=lambda c: c.files.case_id)}
            continue
        if fixed is not None:
            parts = fixed.get(name)
            if parts is None:
                problems.append(Problem(f"data.split_file {cfg.split_file}", f"has no entry for site {name!r}", name))
                out[name] = {k: [] for k in SPLITS}
                continue
            listed = {i for k in SPLITS for i in parts[k]}
            unmasked = sorted(i for k in SPLITS if k != "train" for i in parts[k] if i in no_mask)
            if unmasked:
                problems.append(Problem(f"data.split_file {cfg.split_file}", f"site {name!r}: case(s) "
                                        f"{', '.join(unmasked[:_MAX_LISTED])} have no mask file but are listed under "
                                        "val/test (an image without mask can only be a training case)", name))
            missing = sorted(listed - set(by_id) - set(unmasked))
            if missing:
                problems.append(Problem(f"data.split_file {cfg.split_file}", f"site {name!r}: case id(s) "
                                        f"{', '.join(missing[:_MAX_LISTED])} not found or not readable", name))
            left_out = sorted((set(by_id) | set(no_mask)) - listed)
            if left_out:
                problems.append(Problem(f"data.split_file {cfg.split_file}", f"site {name!r}: {len(left_out)} case(s)"
                                        f" not in the split file are left out: {', '.join(left_out[:_MAX_LISTED])}",
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


def _split_problems(splits: dict[str, dict[str, list[CaseSummary]]], root: Path, had_errors: set[str],
                    all_to_test: bool, maskless: Maskless) -> list[Problem]:
    problems = []
    for name, parts in splits.items():
        total = sum(len(v) for v in parts.values())
        if total == 0:
            if name not in had_errors:
                problems.append(Problem(str(root / name), "no usable case (empty site)", name))
            continue
        if all_to_test:
            continue
        no_mask = maskless.get(name, {})
        if no_mask and all(c.files.case_id in no_mask for k in SPLITS for c in parts[k]):
            problems.append(Problem(str(root / name), f"no image has a mask: all {total} case(s) are training cases "
                                    "(weak labels only), the val and test splits are empty and the site gets no "
                                    "evaluation metrics (reports show it without val/test rows)", name, "warning"))
            continue
        for k in SPLITS:
            if not parts[k]:
                severity: Literal["error", "warning"] = "error" if k == "train" else "warning"
                effect = "the site cannot train" if k == "train" else f"the site has no {k} metrics"
                problems.append(Problem(str(root / name), f"empty {k} split ({total} case(s) in all; {effect})", name,
                                        severity))
    return problems


def _summaries(splits: dict[str, dict[str, list[CaseSummary]]]) -> list[SiteSummary]:
    out = []
    for name, parts in splits.items():
        cases = [c for k in SPLITS for c in parts[k]]
        out.append(SiteSummary(
            name=name,
            cases=len(cases),
            groups=len({c.files.group for c in cases}),
            splits={k: [c.files.case_id for c in parts[k]] for k in SPLITS},
            labels=tuple(sorted({v for c in cases for v in c.labels})),
            shapes=tuple(sorted({tuple(c.shape) for c in cases})),
        ))
    return out


def _run(cfg: DataConfig, seed: int, keep: bool, all_to_test: bool = False) -> tuple[
    DatasetReport, dict[str, dict[str, list[CaseSummary]]]
]:
    root = Path(cfg.root) if cfg.root is not None else None
    index, dims, problems = index_dataset(cfg)
    if cfg.spatial_dims is None and index:
        cfg = cfg.model_copy(update={"spatial_dims": dims})
    weak, found = _plan_weak(index, cfg, seed, dims, all_to_test)
    problems += found
    maskless = _maskless(index)
    cases = [c for site in index for c in site.cases]
    summaries, found = _read_all(cases, cfg, keep, weak)
    problems += found
    if root is None:
        return DatasetReport(root, dims, problems, []), {}
    problems += _shape_problems(summaries, root, dims)
    sites, found = _form_sites(summaries, [s.name for s in index], cfg, seed)
    problems += found
    splits, found = _split_sites(sites, cfg, seed, all_to_test, maskless)
    problems += found
    had_errors = {p.site for p in problems if p.severity == "error"}
    problems += _split_problems(splits, root, had_errors, all_to_test, maskless)
    return DatasetReport(root, dims, problems, _summaries(splits)), splits


def check_dataset(cfg: DataConfig, seed: int = 0) -> DatasetReport:
    """Walk a dataset and report every problem, without keeping arrays or touching the cache.

    Each file is decoded once and checked as a run would check it (the same messages): layout,
    unreadable/truncated files, NaN/inf, image/mask shape or affine mismatch, labels outside the
    label map, channel count, shapes that cannot be stacked, partition and split problems, empty
    sites (errors) and empty val/test splits (warnings).
    """
    return _run(cfg, seed, keep=False)[0]


def _make_weak_set(cases: Sequence[CaseSummary], kind: SupervisionKind) -> SegmentationSet:
    """A weak site's training split: images, no masks, the weak labels (``fedseg.data.supervision``)."""
    done = [c.case for c in cases if c.case is not None]
    labels = np.stack([c.weak[1] for c in cases if c.weak is not None])
    weak = ({WeakKey.BOX_MASK.value: torch.from_numpy(labels)[:, None]} if kind == SupervisionKind.BOX
            else {WeakKey.IMAGE_LABEL.value: torch.from_numpy(labels)})
    split = SegmentationSet(images=torch.from_numpy(np.stack([a.image for a in done])), masks=None,
                            spacing=torch.tensor([a.spacing for a in done], dtype=torch.float64),
                            ids=[c.files.case_id for c in cases])
    return weak_split(split, kind, weak)


def _make_set(cases: Sequence[CaseSummary], channels: int, shape: tuple[int, ...]) -> SegmentationSet:
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
    if done:
        images = torch.from_numpy(np.stack([a.image for a in done]))
        masks = torch.from_numpy(np.stack([a.mask for a in done if a.mask is not None])[:, None])
        spacing = torch.tensor([a.spacing for a in done], dtype=torch.float64)
    else:
        images = torch.zeros((0, channels, *shape), dtype=torch.float32)
        masks = torch.zeros((0, 1, *shape), dtype=torch.int64)
        spacing = torch.zeros((0, dims), dtype=torch.float64)
    return SegmentationSet(images=images, masks=masks, spacing=spacing.reshape(len(done), dims),
                           ids=[c.files.case_id for c in cases])


def _federation(cfg: DataConfig, seed: int, all_to_test: bool = False) -> FederatedData:
    report, splits = _run(cfg, seed, keep=True, all_to_test=all_to_test)
    for p in report.warnings:
        log.warning("%s", p)
    if report.errors:
        header = f"data.root {report.root}" if report.root is not None else "data"
        raise DataError.from_problems(report.errors, header=header)
    first = next((c for parts in splits.values() for k in SPLITS for c in parts[k]), None)
    if first is None:
        raise DataError(f"data.root {report.root}: no usable case")
    shape = tuple(first.shape)
    sites = [
        SiteData(name=name, **{k: _make_set(parts[k], cfg.channels, shape) for k in SPLITS})
        for name, parts in splits.items()
    ]
    return FederatedData(
        sites=sites,
        spatial_dims=report.spatial_dims,
        in_channels=cfg.channels,
        num_classes=cfg.num_classes,
        label_names=list(cfg.label_names) if cfg.label_names else folder_label_names(cfg.num_classes),
    )


def load_folder_federation(cfg: DataConfig, seed: int) -> FederatedData:
    """Read every site of ``cfg.root`` (or ``cfg.sites``) into a :class:`FederatedData`.

    Args:
        cfg: data section with ``source='folder'``; ``sites`` None means every subdirectory of
            ``root`` with an ``images/`` folder, sorted.
        seed: run seed for the splits (and the partition unless ``partition.seed`` is set).

    Returns:
        2D or 3D federated data, ``(N, cfg.channels, *shape)`` images of one shape.

    Raises:
        DataError: every error of every site together (see :func:`check_dataset`).
    """
    return _federation(cfg, seed)


def load_site_folder(site_dir: Path, cfg: DataConfig, seed: int, all_to_test: bool = False) -> SiteData:
    """Read one site folder ``<site_dir>/{images,masks}/`` into memory and split it.

    Args:
        site_dir: the site folder; its name becomes the site name.
        cfg: dataset spec (preprocessing, labels, group column, split); ``root``, ``sites``,
            ``partition`` and ``split_file`` are ignored.
        seed: run seed for the split.
        all_to_test: put every case into ``test`` (evaluate a model on a whole, possibly new, site).

    Raises:
        DataError: every problem of the site together.
    """
    site_dir = Path(site_dir)
    local = cfg.model_copy(update={"source": "folder", "root": site_dir.parent, "sites": [site_dir.name],
                                   "partition": None, "split_file": None})
    return _federation(local, seed, all_to_test=all_to_test).sites[0]
