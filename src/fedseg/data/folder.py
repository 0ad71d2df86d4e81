"""Reader for real multi-site folders, 2D and 3D: ``<root>/<site>/{images,masks}/``.

Pipeline (every stage collects problems with their file names; nothing stops at the first):

1. :mod:`fedseg.data.layout` pairs images (one file, or ``<case>_0000 ...`` channel files) with
   masks and attaches ``metadata.csv`` rows (group column).
2. Every case is read (:mod:`fedseg.io`) and preprocessed (:mod:`fedseg.data.preprocess`), or taken
   from the on-disk cache (:mod:`fedseg.data.cache`) without decoding anything.
3. A single-source dataset can be partitioned into simulated sites (:mod:`fedseg.data.partition`).
4. Each site is split into train/val/test by group (:mod:`fedseg.data.splits`) or by a split file.
5. All cases must share one array shape, unless patches are configured (``mixed_shapes``).

This module reads the cases (stages 1-2) and runs the pipeline; :mod:`fedseg.data.assembly`
forms sites and splits and stacks the arrays (3-5), :mod:`fedseg.data.check` holds the summaries
and the dataset-level rules, :mod:`fedseg.data.weak_label_files` the weak-label files.

:func:`check_dataset` runs stages 1-4 without keeping arrays (``fedseg data check``);
:func:`load_folder_federation` runs them all and raises one :class:`DataError` listing every
error, so ``fedseg run`` refuses to start with the same list ``fedseg data check`` prints.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fedseg.config import DataConfig
from fedseg.data.assembly import (
    WeakPlan,
    build_federation,
    folder_label_names,
    form_sites,
    maskless,
    plan_weak,
    split_sites,
)
from fedseg.data.base import DataError, FederatedData, Problem, SiteData
from fedseg.data.cache import CaseCache, default_cache_dir
from fedseg.data.check import (
    CaseSummary,
    DatasetReport,
    SiteSummary,
    Splits,
    problems_of,
    shape_problems,
    site_summaries,
    split_problems,
)
from fedseg.data.layout import CaseFiles, discover_sites, index_dataset
from fedseg.data.nnunet import index_nnunet, resolve_nnunet
from fedseg.data.preprocess import check_case, foreground_fraction, planned_shape, preprocess_case
from fedseg.data.site_spec import describe_spec, is_sliced, read_site_image, site_config, spec_settings
from fedseg.data.slices import expand_slices
from fedseg.data.splits import split_counts, split_groups
from fedseg.data.weak_label_files import WeakLabels, case_box
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
    "ProgressCallback",
    "resolved",
]

IMAGE_SUFFIXES = IMAGE_2D_SUFFIXES
log = logging.getLogger(__name__)


def _cache(cfg: DataConfig) -> CaseCache | None:
    if not cfg.cache:
        return None
    return CaseCache(cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir(), cfg)


def _read_case(files: CaseFiles, cfg: DataConfig, keep: bool, cache: CaseCache | None) -> tuple[
    CaseSummary | None, list[Problem]
]:
    """Read, check and (``keep``) preprocess one case; every problem of its files together.

    ``cfg`` is the federation's data section; the case is read through its site's spec
    (:mod:`fedseg.data.site_spec`: channel selection, label map, preprocessing; a sliced site's
    volumes stay 3D here, :mod:`fedseg.data.slices` cuts them).
    """
    if files.mask is None:  # only a weak site's training images may lack a mask (_read_all)
        return None, [Problem(str(files.images[0]), "image without mask", files.site)]
    site_cfg = site_config(cfg, files.site, is_sliced(cfg, files.site, files.images[0]))
    key = None
    if keep and cache is not None:
        try:
            key = cache.key(files)
        except OSError as exc:
            return None, [Problem(str(files.mask), f"cannot stat ({exc})", files.site)]
        extra = spec_settings(cfg, files.site)
        if extra:  # the site's own settings shape its arrays too
            key = hashlib.sha256(f"{key}\0{extra}".encode()).hexdigest()
        cached = cache.load(key)
        if cached is not None and cached.mask is not None:
            # file label values are only tabulated by check_dataset, which reads the files
            return CaseSummary(files, cached.image.shape[1:], (), cached.foreground or 0.0, cached), []
    problems: list[Problem] = []
    image = mask = None
    try:
        image = read_site_image(files.site, files.images, cfg, read_image)
    except DataError as exc:
        problems += problems_of(exc, files.site)
    try:
        mask = read_mask(files.mask)
    except DataError as exc:
        problems += problems_of(exc, files.site)
    if image is None or mask is None:
        return None, problems
    problems = [replace(p, site=files.site) for p in check_case(image, mask, site_cfg)]
    if problems:
        return None, problems
    if not keep:
        labels = tuple(int(v) for v in np.unique(mask.array))
        try:
            shape = planned_shape(image, site_cfg)
        except DataError as exc:
            return None, problems_of(exc, files.site)
        return CaseSummary(files, shape, labels, foreground_fraction(mask.array, site_cfg)), []
    try:
        case = preprocess_case(image, mask, site_cfg)
    except DataError as exc:
        return None, problems_of(exc, files.site)
    if cache is not None and key is not None:
        case = cache.save(key, case)  # its arrays now on disk, streamed by the splits
    return CaseSummary(files, case.image.shape[1:], (), case.foreground or 0.0, case), []


def _read_weak_case(files: CaseFiles, cfg: DataConfig, keep: bool, labels: WeakLabels) -> tuple[
    CaseSummary | None, list[Problem]
]:
    """A weak site's training case: its image and weak label. The mask file is never opened, and the
    cache (which would hold the mask) is not used."""
    site_cfg = site_config(cfg, files.site, is_sliced(cfg, files.site, files.images[0]))
    try:
        image = read_site_image(files.site, files.images, cfg, read_image)
        box = case_box(labels, files.case_id, image)
        if not keep:
            return CaseSummary(files, planned_shape(image, site_cfg), (), 0.0), []
        # the box is a 0/1 mask on the image grid: preprocess it like a mask, without the label map
        case = preprocess_case(image, box, site_cfg.model_copy(update={"label_map": None}))
    except DataError as exc:
        return None, problems_of(exc, files.site)
    label = case.mask.astype(np.uint8) if case.mask is not None else labels.vector(files.case_id)
    return CaseSummary(files, case.image.shape[1:], (), 0.0, replace(case, mask=None), (labels.kind, label)), []


ProgressCallback = Callable[[int, int], None]
"""``(cases done, cases in all)``, called from the loading thread after every case."""

_LOG_EVERY = 5.0  # seconds between two progress log lines of a long load


def _workers(cases: int, spatial_dims: int | None) -> int:
    """Threads for reading ``cases`` cases (one thread for a handful).

    2D: two per core, at most 8: a small image costs about as much waiting (the cache entry's two
    ``fsync``) as computing, so a second thread per core keeps the core busy. 3D: one per core, at
    most 8, since every thread holds a whole volume and its resampled copies in memory.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cases <= 8:
        return 1
    return min(8, cores if spatial_dims == 3 else 2 * cores)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread while the loader threads run (restored afterwards): ``workers x
    torch threads`` oversubscribes the cores (10x slower resizes on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _read_all(cases: list[CaseFiles], cfg: DataConfig, keep: bool, weak: WeakPlan | None = None,
              progress: ProgressCallback | None = None) -> tuple[list[CaseSummary], list[Problem]]:
    """Read (``keep``: and preprocess, or take from the cache) every case, in parallel threads.

    PNG decoding, the numpy, scipy and torch kernels and the cache's ``fsync`` mostly release the GIL, so threads scale
    over the cores without the start-up and pickling costs of processes. Results keep the order of ``cases``.
    ``progress`` (and an INFO log line every few seconds) reports the cases done.
    """
    cache = _cache(cfg) if keep else None
    weak = weak or {}
    total = len(cases)
    done = 0
    lock = threading.Lock()
    start = last = time.perf_counter()

    def work(f: CaseFiles) -> tuple[CaseSummary | None, list[Problem]]:
        plan = weak.get(f.site)
        if plan is not None and f.case_id in plan[0]:
            return _read_weak_case(f, cfg, keep, plan[1])
        if f.mask is None:
            # not a training case (a split file or all_to_test put it elsewhere, or the site's label
            # file is unreadable): nothing to read; split_sites or plan_weak (fedseg.data.assembly) report why
            return None, []
        return _read_case(f, cfg, keep, cache)

    def counted(f: CaseFiles) -> tuple[CaseSummary | None, list[Problem]]:
        nonlocal done, last
        result = work(f)
        with lock:
            done += 1
            now = time.perf_counter()
            if progress is not None:
                progress(done, total)
            if now - last >= _LOG_EVERY and done < total:
                last = now
                log.info("reading cases: %d/%d (%.0f a second)", done, total, done / (now - start))
        return result

    workers = _workers(total, cfg.spatial_dims)
    with _one_torch_thread():
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(counted, cases))
        else:
            results = [counted(c) for c in cases]
    elapsed = time.perf_counter() - start
    if cache is not None:
        log.info("preprocessed-case cache %s: %d hit(s), %d miss(es); %d case(s) in %.1f s", cache.directory,
                 cache.hits, cache.misses, total, elapsed)
    summaries = [s for s, _ in results if s is not None]
    return summaries, [p for _, found in results for p in found]


def _run(cfg: DataConfig, seed: int, keep: bool, all_to_test: bool = False,
         progress: ProgressCallback | None = None, mixed_shapes: bool = False) -> tuple[DatasetReport, Splits]:
    """Index, read (``keep``: and preprocess), form sites, split, and collect every problem.

    ``cfg`` must be resolved (:func:`resolved`): an nnU-Net source indexed by :mod:`fedseg.data.nnunet`.
    ``mixed_shapes``: cases may differ in shape (patch training, ``train.patch_size``)."""
    root = Path(cfg.root) if cfg.root is not None else None
    index, dims, problems = index_nnunet(cfg) if cfg.source == "nnunet" else index_dataset(cfg)
    if cfg.spatial_dims is None and index:
        cfg = cfg.model_copy(update={"spatial_dims": dims})
    weak, found = plan_weak(index, cfg, seed, dims, all_to_test)
    problems += found
    no_masks = maskless(index)
    cases = [c for site in index for c in site.cases]
    summaries, found = _read_all(cases, cfg, keep, weak, progress)
    problems += found
    summaries, found = expand_slices(summaries, index, cfg, seed)
    problems += found
    if root is None:
        return DatasetReport(root, dims, problems, []), {}
    if not mixed_shapes:
        problems += shape_problems(summaries, root, dims)
    sites, found = form_sites(summaries, [s.name for s in index], cfg, seed)
    problems += found
    splits, found = split_sites(sites, cfg, seed, all_to_test, no_masks)
    problems += found
    had_errors = {p.site for p in problems if p.severity == "error"}
    problems += split_problems(splits, root, had_errors, all_to_test, no_masks)
    summaries_by_site = site_summaries(splits)
    sliced = {s.name for s in index if s.slice_axis is not None}
    for summary in summaries_by_site:
        summary.spec = describe_spec(cfg, summary.name, summary.name in sliced)
    return DatasetReport(root, dims, problems, summaries_by_site), splits


def check_dataset(cfg: DataConfig, seed: int = 0) -> DatasetReport:
    """Walk a dataset and report every problem, without keeping arrays or touching the cache.

    Each file is decoded once and checked as a run would check it (the same messages): layout,
    unreadable/truncated files, NaN/inf, image/mask shape or affine mismatch, labels outside the
    label map, channel count, shapes that cannot be stacked, partition and split problems, empty
    sites (errors) and empty val/test splits (warnings).
    """
    cfg, problems = resolved(cfg)
    report = _run(cfg, seed, keep=False)[0]
    report.problems[:0] = problems
    return report


def resolved(cfg: DataConfig) -> tuple[DataConfig, list[Problem]]:
    """``cfg`` completed from its source's own description (an nnU-Net ``dataset.json``: channels,
    labels, dimension; :func:`fedseg.data.nnunet.resolve_nnunet`), and the problems found doing so."""
    return resolve_nnunet(cfg) if cfg.source == "nnunet" else (cfg, [])


def _federation(cfg: DataConfig, seed: int, all_to_test: bool = False,
                progress: ProgressCallback | None = None, mixed_shapes: bool = False) -> FederatedData:
    cfg, problems = resolved(cfg)
    report, splits = _run(cfg, seed, keep=True, all_to_test=all_to_test, progress=progress,
                          mixed_shapes=mixed_shapes)
    report.problems[:0] = problems
    for p in report.warnings:
        log.warning("%s", p)
    return build_federation(report, splits, cfg)


def load_folder_federation(cfg: DataConfig, seed: int, progress: ProgressCallback | None = None,
                           mixed_shapes: bool = False) -> FederatedData:
    """Read every site of ``cfg.root`` (or ``cfg.sites``) into a :class:`FederatedData`.

    Args:
        cfg: data section with ``source='folder'``; ``sites`` None means every subdirectory of
            ``root`` with an ``images/`` folder, sorted.
        seed: run seed for the splits (and the partition unless ``partition.seed`` is set).
        progress: called with ``(cases read, cases in all)`` while the cases are read.
        mixed_shapes: allow cases of different shapes (training on patches, ``train.patch_size``);
            otherwise they are an error.

    Returns:
        2D or 3D federated data, ``(N, cfg.channels, *shape)`` images (of one shape unless
        ``mixed_shapes``), streamed from the case cache when it is on (``data.cache``).

    Raises:
        DataError: every error of every site together (see :func:`check_dataset`).
    """
    return _federation(cfg, seed, progress=progress, mixed_shapes=mixed_shapes)


def load_site_folder(site_dir: Path, cfg: DataConfig, seed: int, all_to_test: bool = False,
                     mixed_shapes: bool = False) -> SiteData:
    """Read one site folder ``<site_dir>/{images,masks}/`` into memory and split it.

    Args:
        site_dir: the site folder; its name becomes the site name.
        cfg: dataset spec (preprocessing, labels, group column, split); ``root``, ``sites``,
            ``partition`` and ``split_file`` are ignored.
        seed: run seed for the split.
        all_to_test: put every case into ``test`` (evaluate a model on a whole, possibly new, site).
        mixed_shapes: allow cases of different shapes (a model trained on patches).

    Raises:
        DataError: every problem of the site together.
    """
    site_dir = Path(site_dir)
    local = cfg.model_copy(update={"source": "folder", "root": site_dir.parent, "sites": [site_dir.name],
                                   "partition": None, "split_file": None})
    return _federation(local, seed, all_to_test=all_to_test, mixed_shapes=mixed_shapes).sites[0]
