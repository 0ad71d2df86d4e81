"""On-disk cache of preprocessed cases, so a second load (or run) does not decode PNG/NIfTI again.

Three files per case under ``<cache_dir>/<key[:2]>/``: ``<key>.image.npy`` (float32
``(C, *spatial)``), ``<key>.mask.npy`` (uint8 class indices, int32 beyond 255 classes) and ``<key>.json``
(spacing, geometry info, foreground fraction, array shapes), written in this order, so the
``.json`` marks a complete entry. Loading reads only the ``.json`` and returns a
:class:`StoredCase` naming the ``.npy`` files, which the splits open memory-mapped case by case
(:class:`fedseg.data.cases.ListCases`): nothing of the arrays is read until training needs it, and
memory does not grow with the number of cases. The key is a SHA-256 over

* every input file's resolved path, size and modification time (ns): editing, replacing or touching
  a file invalidates its case (a content hash would read every file on every load, which is what
  the cache avoids);
* the preprocessing settings that shape the arrays (channels, labels, spacing policy, ...);
* :data:`CACHE_VERSION`, bumped whenever preprocessing code changes its output.

Entries are written atomically (:func:`fedseg.io.atomic.atomic_open`: temporary file + fsync +
rename), so concurrent loaders and killed runs never leave a torn entry; unreadable entries (a
missing ``.npy`` or one of the wrong shape) count as misses. Temporary files of killed writers are
deleted when a cache opens (those of processes no longer running, older than :data:`ORPHAN_AGE`).
Nothing is ever evicted: delete the folder (``make clean``) to reclaim space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import write_array

from fedseg.config import DataConfig
from fedseg.data.layout import CaseFiles
from fedseg.data.preprocess import GeometryInfo, PreprocessedCase
from fedseg.io.atomic import atomic_open, remove_orphans

__all__ = [
    "CACHE_VERSION",
    "ORPHAN_AGE",
    "RUN_CACHE",
    "CaseCache",
    "StoredCase",
    "default_cache_dir",
    "preprocessing_key",
    "with_run_cache",
]

CACHE_VERSION = 4

ORPHAN_AGE = 3600.0
"""Seconds after which a dead writer's temporary file in the cache is deleted: a cache may be
shared between machines, where a process id says nothing, and no entry takes this long to write."""
log = logging.getLogger(__name__)


RUN_CACHE = "cache"
"""The cache folder inside a run directory (the default for the runs that hold a site's data)."""


def default_cache_dir() -> Path:
    """Where preprocessed (patient-derived) arrays go when neither ``data.cache_dir`` nor a run
    directory says: ``$FEDSEG_CACHE_DIR`` when set (tests point it at a temporary folder), else
    the user's cache folder (``$XDG_CACHE_HOME/fedseg``, default ``~/.cache/fedseg``) - never the
    current directory."""
    env = os.environ.get("FEDSEG_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedseg"


def with_run_cache(cfg: DataConfig, run_dir: Path | None) -> DataConfig:
    """``cfg`` with its cache under ``run_dir/cache`` when neither ``data.cache_dir`` nor
    ``$FEDSEG_CACHE_DIR`` names one (the saved config is not changed: only the copy used to load)."""
    if run_dir is None or cfg.cache_dir is not None or os.environ.get("FEDSEG_CACHE_DIR"):
        return cfg
    return cfg.model_copy(update={"cache_dir": Path(run_dir) / RUN_CACHE})


def preprocessing_key(cfg: DataConfig) -> str:
    """The settings that change a preprocessed case, as canonical JSON."""
    fields = ("channels", "num_classes", "label_map", "pixel_spacing", "image_size", "preprocess")
    settings = cfg.model_dump(mode="json", include=set(fields))
    return json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True)


@dataclass
class StoredCase(PreprocessedCase):
    """A cached case whose arrays stay on disk.

    ``image`` and ``mask`` are zero-size placeholders of the right shape and dtype
    (``np.broadcast_to`` of one zero, read-only): only their shapes may be used; the values are
    in ``image_path`` (float32 ``(C, *spatial)``) and ``mask_path`` (integer ``(*spatial)``), read
    memory-mapped by :class:`fedseg.data.cases.ListCases`.
    """

    image_path: Path = Path()
    mask_path: Path | None = None

    def materialised(self) -> PreprocessedCase:
        """The case with its arrays read into memory (for code that needs the values, e.g. slicing)."""
        image = np.load(self.image_path)
        mask = np.load(self.mask_path) if self.mask_path is not None else None
        fields = {f: getattr(self, f) for f in PreprocessedCase.__dataclass_fields__}
        return PreprocessedCase(**{**fields, "image": image, "mask": mask})


def _placeholder(shape: list[int], dtype: str) -> np.ndarray:
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(int(n) for n in shape))


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype of a ``.npy`` file, from its header only."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f".npy format version {version} is not written by this cache")
    return tuple(int(n) for n in shape), np.dtype(dtype)


class CaseCache:
    """Preprocessed cases keyed by file identity + settings.

    Args:
        directory: cache folder (created on first write).
        cfg: the dataset spec whose preprocessing settings enter the key.
    """

    def __init__(self, directory: Path, cfg: DataConfig) -> None:
        self.directory = Path(directory)
        self._settings = preprocessing_key(cfg)
        self.hits = 0
        self.misses = 0
        remove_orphans(self.directory, min_age=ORPHAN_AGE)

    def key(self, case: CaseFiles) -> str:
        digest = hashlib.sha256(self._settings.encode("utf-8"))
        for path in (*case.images, *([case.mask] if case.mask is not None else [])):
            st = path.stat()
            digest.update(f"\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return digest.hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        """``(.json, .image.npy, .mask.npy)`` of one entry."""
        base = self.directory / key[:2] / key
        return base.with_suffix(".json"), base.with_suffix(".image.npy"), base.with_suffix(".mask.npy")

    def load(self, key: str) -> StoredCase | None:
        """The cached case (its arrays left on disk), or ``None`` (missing or unreadable entry)."""
        meta_path, image_path, mask_path = self._paths(key)
        if not meta_path.is_file():
            self.misses += 1
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            image_shape, image_dtype = _header(image_path)
            if list(image_shape) != meta["image_shape"] or image_dtype != np.float32:
                raise ValueError(f"{image_path.name} is {image_dtype} {list(image_shape)}, the entry says float32 "
                                 f"{meta['image_shape']}")
            has_mask = meta["mask_shape"] is not None
            if has_mask:
                mask_shape, mask_dtype = _header(mask_path)
                if list(mask_shape) != meta["mask_shape"] or mask_dtype.kind not in "iu":
                    raise ValueError(f"{mask_path.name} is {mask_dtype} {list(mask_shape)}, the entry says "
                                     f"integer {meta['mask_shape']}")
            case = StoredCase(
                image=_placeholder(meta["image_shape"], "float32"),
                mask=_placeholder(meta["mask_shape"], "int64") if has_mask else None,
                spacing=tuple(float(v) for v in meta["spacing"]),
                info=GeometryInfo.from_dict(meta["info"]),
                foreground=meta.get("foreground"),
                image_path=image_path,
                mask_path=mask_path if has_mask else None,
            )
        except Exception as exc:  # a torn or foreign file: recompute and overwrite
            log.warning("cache entry %s unreadable (%s: %s); recomputing", meta_path, type(exc).__name__, exc)
            self.misses += 1
            return None
        self.hits += 1
        return case

    def save(self, key: str, case: PreprocessedCase) -> PreprocessedCase:
        """Store ``case`` atomically and return it as a :class:`StoredCase` (its arrays can then be
        freed); on a failure to write, logged and never raised, ``case`` itself."""
        meta_path, image_path, mask_path = self._paths(key)
        meta = {"spacing": list(case.spacing), "info": case.info.to_dict(), "foreground": case.foreground,
                "image_shape": list(case.image.shape),
                "mask_shape": None if case.mask is None else list(case.mask.shape)}
        try:
            with atomic_open(image_path) as fh:
                write_array(fh, np.ascontiguousarray(case.image, dtype=np.float32), allow_pickle=False)
            if case.mask is not None:
                small = case.mask.size == 0 or (case.mask.min() >= 0 and case.mask.max() < 256)
                with atomic_open(mask_path) as fh:
                    write_array(fh, np.ascontiguousarray(case.mask, dtype=np.uint8 if small else np.int32),
                                allow_pickle=False)
            with atomic_open(meta_path) as fh:  # last: marks the entry complete
                fh.write(json.dumps(meta).encode("utf-8"))
        except OSError as exc:
            log.warning("cannot write cache entry %s (%s); continuing without caching it", meta_path, exc)
            return case
        return StoredCase(image=_placeholder(list(case.image.shape), "float32"),
                          mask=None if case.mask is None else _placeholder(list(case.mask.shape), "int64"),
                          spacing=case.spacing, info=case.info, foreground=case.foreground,
                          image_path=image_path, mask_path=None if case.mask is None else mask_path)
