"""On-disk cache of preprocessed cases, so a second load (or run) does not decode PNG/NIfTI again.

One uncompressed ``.npz`` per case under ``<cache_dir>/<key[:2]>/<key>.npz`` holding the
preprocessed image, mask, spacing and geometry info. The key is a SHA-256 over

* every input file's resolved path, size and modification time (ns): editing, replacing or
  touching a file invalidates its case (a content hash would read every file on every load,
  which is what the cache avoids);
* the preprocessing settings that shape the arrays (channels, labels, spacing policy, ...);
* :data:`CACHE_VERSION`, bumped whenever preprocessing code changes its output.

Entries are written atomically (:func:`fedseg.io.atomic.atomic_open`: temporary file + fsync +
rename), so concurrent loaders and killed runs never leave a torn entry; unreadable entries count
as misses. Temporary files of killed writers are deleted when a cache opens (those of processes
no longer running, older than :data:`ORPHAN_AGE`). Nothing is ever evicted: delete
the folder (``make clean``) to reclaim space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from fedseg.config import DataConfig
from fedseg.data.layout import CaseFiles
from fedseg.data.preprocess import GeometryInfo, PreprocessedCase
from fedseg.io.atomic import atomic_open, remove_orphans

__all__ = ["CACHE_VERSION", "ORPHAN_AGE", "CaseCache", "default_cache_dir", "preprocessing_key"]

CACHE_VERSION = 3

ORPHAN_AGE = 3600.0
"""Seconds after which a dead writer's temporary file in the cache is deleted: a cache may be
shared between machines, where a process id says nothing, and no entry takes this long to write."""
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$FEDSEG_CACHE_DIR`` when set (tests point it at a temporary folder), else ``.fedseg_cache``."""
    return Path(os.environ.get("FEDSEG_CACHE_DIR") or ".fedseg_cache")


def preprocessing_key(cfg: DataConfig) -> str:
    """The settings that change a preprocessed case, as canonical JSON."""
    fields = ("channels", "num_classes", "label_map", "pixel_spacing", "image_size", "preprocess")
    settings = cfg.model_dump(mode="json", include=set(fields))
    return json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True)


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

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def load(self, key: str) -> PreprocessedCase | None:
        """The cached case, or ``None`` (missing or unreadable entry)."""
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                mask = npz["mask"].astype(np.int64) if "mask" in npz.files else None
                case = PreprocessedCase(
                    image=np.ascontiguousarray(npz["image"]),
                    mask=mask,
                    spacing=tuple(float(v) for v in meta["spacing"]),
                    info=GeometryInfo.from_dict(meta["info"]),
                    foreground=meta.get("foreground"),
                )
        except Exception as exc:  # a torn or foreign file: recompute and overwrite
            log.warning("cache entry %s unreadable (%s: %s); recomputing", path, type(exc).__name__, exc)
            self.misses += 1
            return None
        self.hits += 1
        return case

    def save(self, key: str, case: PreprocessedCase) -> None:
        """Store ``case`` atomically; a failure to write is logged, never raised."""
        path = self._path(key)
        meta = {"spacing": list(case.spacing), "info": case.info.to_dict(), "foreground": case.foreground}
        arrays = {"image": case.image, "meta": np.asarray(json.dumps(meta))}
        if case.mask is not None:
            small = case.mask.size == 0 or (case.mask.min() >= 0 and case.mask.max() < 256)
            arrays["mask"] = case.mask.astype(np.uint8 if small else np.int32)
        try:
            with atomic_open(path) as fh:
                np.savez(fh, allow_pickle=False, **arrays)
        except OSError as exc:
            log.warning("cannot write cache entry %s (%s); continuing without caching it", path, exc)
