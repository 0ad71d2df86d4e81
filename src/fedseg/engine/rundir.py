"""The run directory: resolved config, command, metrics.jsonl, checkpoints, summary, report.

Layout::

    RUN_DIR/config.yaml        resolved configuration (every default filled in)
    RUN_DIR/command.txt        the exact command that produced the run
    RUN_DIR/run_info.json      algorithm, sites, flags the report needs
    RUN_DIR/metrics.jsonl      one JSON object per line (see below)
    RUN_DIR/checkpoints/last.pt + last.json    atomic, every round
    RUN_DIR/checkpoints/best.pt    eval.select best_val: the round with the best mean val Dice
    RUN_DIR/client_states/     spilled client states (large states only)
    RUN_DIR/summary.json       final test metrics per site, global and personalised
    RUN_DIR/report.md, plots/*.png

``metrics.jsonl`` lines carry ``round``, ``site`` and ``kind``:

* ``kind=train``: one per sampled client per round: ``loss``, ``n`` (training samples),
  ``bytes_up``, ``bytes_down``, ``seconds``;
* ``kind=round``: one per round (``site="__server__"``): ``clients``, ``bytes_up``, ``bytes_down``
  (sums), ``seconds`` (round wall time), ``overhead_seconds`` (serialise + aggregate + broadcast);
* ``kind=comm``: one per evaluation or personalize exchange (``site="__server__"``, ``phase``,
  ``split`` for evaluations): ``clients``, ``bytes_up``, ``bytes_down``. Train, round and comm
  lines also carry ``bytes_up_raw``/``bytes_down_raw``: the same messages without any codec;
* ``kind=eval``: ``split`` (val|test), ``model`` (global|personal|unseen), ``dice``, ``iou``,
  ``hd95``, ``precision``, ``recall``, ``n``; test lines also ``selection`` (best_val|last) and
  ``selected_round`` (the round of the scored model).

Key names are :class:`fedseg.records.Field` members.

One process at a time writes a run directory: :meth:`RunDir.lock` holds an exclusive ``flock`` on
the directory itself (no lock file) until :meth:`RunDir.unlock` or the process's death (SIGKILL
included, so no stale lock survives a crash); another process that starts or resumes a run there
is refused (:class:`RunDirBusy`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedseg.io.atomic import atomic_write_text, remove_orphans

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunDir", "RunDirBusy", "MetricsError", "atomic_write_text", "read_metrics"]

logger = logging.getLogger(__name__)

_LOCKS: dict[str, int] = {}
"""Run directories this process holds (real path -> the locked directory descriptor): a run
that prepares its directory twice (Flower's simulation driver, then its ServerApp thread) holds
it once."""


def _forget_inherited() -> None:
    """In a forked child (a DataLoader worker, a test's forked run): the lock stays its parent's.
    Closing the inherited descriptors keeps a worker that outlives a killed run from holding it."""
    for fd in _LOCKS.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory (:meth:`RunDir.lock`)."""


def _holder(path: Path) -> int | None:
    """The pid that holds the ``flock`` on ``path`` according to ``/proc/locks`` (Linux), else None."""
    try:
        st = os.stat(path)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="ascii") as fh:
            for line in fh:
                parts = line.split()
                if "FLOCK" in parts and key in parts:
                    return int(parts[parts.index(key) - 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class MetricsError(ValueError):
    """A ``metrics.jsonl`` line that is complete but not a JSON object (not written by fedseg)."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl.

    Records are appended whole lines at a time, so a killed run can leave only its *last* line
    torn (no final newline): that line is dropped here and rewritten away on ``--resume``
    (:meth:`RunDir.truncate_metrics_after`). Any other undecodable line is an error.

    Raises:
        MetricsError: a complete line that is not a JSON object; names the file and line.
    """
    records: list[dict[str, Any]] = []
    if not path.is_file():
        return records
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline, else an unfinished last record
    if torn.strip():
        logger.warning("%s: dropping a torn last line (%d characters) left by an interrupted write", path, len(torn))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetricsError(f"{path}:{number}: not a JSON record ({exc.msg}); fedseg appends whole lines, so only "
                               "a torn last line is expected after a crash. Remove or fix the line") from None
        if not isinstance(record, dict):
            raise MetricsError(f"{path}:{number}: a JSON {type(record).__name__}, not a record (object)")
        records.append(record)
    return records


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "config.yaml"
        self.command = root / "command.txt"
        self.info = root / "run_info.json"
        self.metrics = root / "metrics.jsonl"
        self.checkpoint = root / "checkpoints" / "last.pt"
        self.checkpoint_meta = root / "checkpoints" / "last.json"
        self.best_checkpoint = root / "checkpoints" / "best.pt"
        self.client_states = root / "client_states"
        self.summary = root / "summary.json"
        self.report = root / "report.md"
        self.plots = root / "plots"
        self.sinks: list[Any] = []  # trackers fed with every appended batch (fedseg.engine.tracking)

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def lock(self) -> None:
        """Hold the directory for this process (see the module docstring); a no-op when this
        process holds it already, or where the file system has no locks (a warning).

        Raises:
            RunDirBusy: another live process holds it; the message names the directory, the
                holder's pid where known, and what to do.
        """
        key = os.path.realpath(self.root)
        if fcntl is None or key in _LOCKS:
            return
        try:
            fd = os.open(key, os.O_RDONLY)
        except OSError as exc:
            logger.warning("%s: cannot lock the run directory (%s); make sure no other process writes it", key, exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _holder(self.root)
            raise RunDirBusy(
                f"{self.root} is in use by another process{f' (pid {pid})' if pid else ''} that is still running a "
                "fedseg run there; two processes writing one run would both append its rounds to metrics.jsonl. "
                "Wait for it to end (or stop it), then continue with --resume") from None
        except OSError as exc:
            os.close(fd)
            logger.warning("%s: cannot lock the run directory (%s); make sure no other process writes it", key, exc)
            return
        _LOCKS[key] = fd

    def unlock(self) -> None:
        """Let other processes use the directory again (a no-op when this process does not hold it)."""
        fd = _LOCKS.pop(os.path.realpath(self.root), None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the open file releases the flock

    def remove_orphans(self) -> list[Path]:
        """Delete temporary files that killed writes left in the run directory (only those of
        processes no longer running: see :func:`fedseg.io.atomic.remove_orphans`)."""
        return remove_orphans(self.root, legacy=True)

    def append_metrics(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records as whole lines in one write, then fsync (append-only: a kill can only
        tear the last line, which :func:`read_metrics` drops)."""
        records = list(records)
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        if not lines:
            return
        self._drop_torn_tail()
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        for sink in self.sinks:
            sink.write(records)

    def _drop_torn_tail(self) -> None:
        """Cut an unfinished last line (a killed append) so the next record starts on its own line."""
        try:
            with open(self.metrics, "rb+") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size == 0:
                    return
                fh.seek(size - 1)
                if fh.read(1) == b"\n":
                    return
                block = min(size, 1 << 20)
                while True:  # find the last newline, reading backwards a block at a time
                    fh.seek(size - block)
                    cut = fh.read(block).rfind(b"\n")
                    if cut >= 0:
                        keep = size - block + cut + 1
                        break
                    if block == size:
                        keep = 0
                        break
                    block = min(size, block * 2)
                logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted write",
                               self.metrics, size - keep)
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
        except FileNotFoundError:
            return

    def truncate_metrics_after(self, rnd: int, *, keep_personalize: bool = False) -> None:
        """Drop records of rounds after ``rnd`` and the final test records (a resumed run
        re-does them), and the post-federation phase's unless it completed."""
        kept = [
            r
            for r in read_metrics(self.metrics)
            if int(r.get("round", 0)) <= rnd
            and r.get("split") != "test"
            and (keep_personalize or (r.get("kind") != "personalize" and r.get("phase") != "personalize"))
        ]
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
