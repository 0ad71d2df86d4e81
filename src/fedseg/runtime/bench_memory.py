"""Peak memory of a whole process tree, sampled: the benchmark's measure for engines that start
processes (``--engine flower-sim``: Ray's GCS, raylet and worker actors are descendants of the run).

``ru_maxrss`` (:func:`fedseg.runtime.bench_child.peak_rss_mb`) is exact but covers one process.
:class:`TreeMemory` reads ``/proc`` every ``interval`` seconds in a daemon thread and keeps the
largest sum over the root and all its descendants of

* RSS (``/proc/PID/statm``): every resident page of every process, so a page shared by several
  processes (a shared library, Ray's shared-memory object store) is counted once per process: an
  upper bound of the tree's memory;
* PSS (``/proc/PID/smaps_rollup``): each shared page divided among the processes that map it, so
  the sum is the tree's own memory without double counting (Linux 4.14 and later).

A peak between two samples can be missed: the figures are lower bounds of the true peaks.
:meth:`TreeMemory.survivors` lists the sampled descendants still running after the run (Flower
1.42's Ray backend asks its actors to exit and shuts Ray down at once, so the actors can outlive
the run by minutes, re-parented to init); :func:`end_processes` ends them. Only Linux has ``/proc``: elsewhere :meth:`TreeMemory.supported`
is False and the peaks stay None.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TreePeak", "TreeMemory", "descendants", "end_processes", "rss_kib", "pss_kib"]

_PROC = Path("/proc")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


@dataclass
class TreePeak:
    """The largest sums seen (MiB; None when nothing was sampled) and the most processes at once."""

    rss_mb: float | None = None
    pss_mb: float | None = None
    processes: int = 0
    samples: int = 0
    parts: dict[str, float] = field(default_factory=dict)  # at the RSS peak: process name -> summed RSS (MiB)


def _ppid(stat: str) -> int:
    """The parent pid from ``/proc/PID/stat`` (the command name in parentheses may hold spaces)."""
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _start_time(stat: str) -> int:
    """The start time (clock ticks after boot) from ``/proc/PID/stat``: with the pid, a process's identity."""
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _scan() -> dict[int, tuple[int, int]]:
    """Every process's ``(parent pid, start time)``."""
    found: dict[int, tuple[int, int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            found[int(entry.name)] = (_ppid(stat), _start_time(stat))
        except (OSError, ValueError, IndexError):  # the process ended while we read it
            continue
    return found


def descendants(root: int, procs: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """``root`` and every process below it (children, their children, ...), ``root`` first."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in (_scan() if procs is None else procs).items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def end_processes(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM each of ``pids``, then SIGKILL those still alive after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any((_PROC / str(p)).exists() for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if (_PROC / str(p)).exists()]
        if not pids:
            return


def _name(pid: int) -> str:
    """The process's name (``/proc/PID/comm``, at most 15 characters; ``?`` when it has ended)."""
    try:
        return (_PROC / str(pid) / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 when it has ended)."""
    try:
        return int((_PROC / str(pid) / "statm").read_text().split()[1]) * _PAGE_KIB
    except (OSError, ValueError, IndexError):
        return 0


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB (0 when it has ended or the kernel has no smaps_rollup)."""
    try:
        for line in (_PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


class TreeMemory:
    """Samples the memory of ``root`` (default: this process) and its descendants until stopped.

    Use as a context manager; :attr:`peak` holds the result (module docstring)::

        with TreeMemory() as mem:
            run()
        mem.peak.rss_mb, mem.peak.pss_mb
    """

    def __init__(self, root: int | None = None, interval: float = 1.0) -> None:
        self.root = os.getpid() if root is None else root
        self.interval = interval
        self.peak = TreePeak()
        self.seen: dict[int, int] = {}  # every descendant sampled: pid -> start time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def supported() -> bool:
        """Whether this system has ``/proc`` with the files read here."""
        return (_PROC / str(os.getpid()) / "statm").is_file()

    def sample(self) -> None:
        """Take one sample now and update :attr:`peak`."""
        procs = _scan()
        pids = descendants(self.root, procs)
        self.seen.update({p: procs[p][1] for p in pids if p != self.root and p in procs})
        each = {p: rss_kib(p) / 1024 for p in pids}
        rss = sum(each.values())
        pss = sum(pss_kib(p) for p in pids) / 1024
        peak = self.peak
        if peak.rss_mb is None or rss > peak.rss_mb:
            parts: dict[str, float] = {}
            for pid, mb in each.items():
                name = "this process" if pid == self.root else _name(pid)
                parts[name] = parts.get(name, 0.0) + mb
            peak.parts = parts
        peak.rss_mb = rss if peak.rss_mb is None else max(peak.rss_mb, rss)
        peak.pss_mb = pss if peak.pss_mb is None else max(peak.pss_mb, pss)
        peak.processes = max(peak.processes, len(pids))
        peak.samples += 1

    def survivors(self) -> list[int]:
        """Processes sampled in the tree that still run now, outside it or not (e.g. Ray workers
        that outlive their driver, re-parented to init): same pid and start time."""
        procs = _scan()
        return sorted(p for p, start in self.seen.items() if p in procs and procs[p][1] == start)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        if self.supported():
            self.sample()
            self._thread = threading.Thread(target=self._loop, name="fedseg-tree-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.sample()  # the end state too (a tree that has shut its workers down already counts less)
            self._thread = None
