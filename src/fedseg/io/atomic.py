"""Crash-safe file writing: every file fedseg writes appears whole or not at all.

A writer fills a temporary file in the target's own folder, flushes and ``fsync``s it, renames it
over the target (``os.replace``, atomic on POSIX) and ``fsync``s the folder so the rename itself
survives a power cut. A process killed mid-write leaves the old file (or none) plus an orphan
temporary file, which can never be mistaken for a real one: its name is hidden (leading dot) and
ends in :data:`TEMP_SUFFIX`, which no fedseg reader globs for (``*.pt``, ``*.png``, ``*.npz``...).
:func:`remove_orphans` deletes the orphans of dead writers; runs call it on their run directory
when they start or resume, the preprocessed-case cache when it opens.

Append-only files (``metrics.jsonl``) are not rewritten on every record: their readers drop a
torn last line instead (:func:`fedseg.engine.rundir.read_metrics`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "TEMP_SUFFIX",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "temp_path",
    "is_temp",
    "remove_orphans",
]

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".fedseg-tmp"
"""The ending of every temporary file fedseg writes (``.<name>.<pid>.<random>.fedseg-tmp``)."""

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")
# the temporary names of fedseg versions before this module (``.<name>.tmp<pid>``, plots
# ``.<stem>.tmp<pid>.png``, splits ``.splits.json.tmp``): removed from run directories as well
_LEGACY = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d*)(\.png)?$")


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp(path: Path, *, legacy: bool = False) -> bool:
    """Whether ``path`` is a fedseg temporary file (``legacy``: also the older names)."""
    return bool(_TEMP.match(path.name) or (legacy and _LEGACY.match(path.name)))


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path | str) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` only when the block ends normally.

    The parent folder is created. On an exception the temporary file is deleted and ``path``
    keeps its old content. Use for ``torch.save``, ``np.savez``, ``savefig``, ``Image.save``::

        with atomic_open(path) as fh:
            torch.save(obj, fh)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_open`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (ours counts as alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by someone else
    return True


def remove_orphans(directory: Path, *, recursive: bool = True, min_age: float = 0.0,
                   legacy: bool = False) -> list[Path]:
    """Delete the temporary files of killed writers under ``directory``.

    A temporary file is an orphan when the process named in it no longer exists on this machine
    and it was last modified more than ``min_age`` seconds ago (a folder shared between machines,
    such as a cache on a network drive, should pass a generous ``min_age``: a pid says nothing
    about another machine's processes). Files of a live writer are left alone.

    Args:
        recursive: also look in sub-folders.
        legacy: also remove the temporary names of older fedseg versions (run directories).

    Returns:
        The files removed (a warning is logged for each).
    """
    if not directory.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    candidates = directory.rglob(".*") if recursive else directory.glob(".*")
    for path in candidates:
        match = _TEMP.match(path.name) or (_LEGACY.match(path.name) if legacy else None)
        if match is None or not path.is_file():
            continue
        pid = int(match.group("pid") or 0)
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if _alive(pid) or age < min_age:
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError as exc:
            log.warning("cannot remove the orphan temporary file %s (%s)", path, exc)
            continue
        log.warning("removed %s: an unfinished write (%d bytes) of a process that no longer runs", path, size)
        removed.append(path)
    return removed
