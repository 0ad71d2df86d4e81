"""The process-tree memory sampler of the benchmark runner (runtime/bench_memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedseg.runtime.bench_memory import TreeMemory, _ppid, descendants, end_processes, pss_kib, rss_kib

pytestmark = pytest.mark.skipif(not TreeMemory.supported(), reason="needs Linux /proc")


def test_parent_pid_of_a_command_name_with_spaces_and_parentheses() -> None:
    assert _ppid("4321 (ray::Actor (x) y) S 77 4321 4321 0 -1") == 77


def test_a_child_process_is_in_the_tree_and_its_memory_counts() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; b = b'x' * (96 * 2**20); time.sleep(60)"])
    try:
        deadline = time.monotonic() + 20
        while rss_kib(child.pid) < 90 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in descendants(os.getpid())
        own = rss_kib(os.getpid())
        with TreeMemory(interval=0.05) as mem:
            time.sleep(0.2)
        peak = mem.peak
        assert peak.processes >= 2 and peak.samples >= 2
        assert peak.parts["this process"] > 0 and sum(peak.parts.values()) == pytest.approx(peak.rss_mb)
        assert any(name.startswith("python") and mb >= 90 for name, mb in peak.parts.items())  # the child
        assert peak.rss_mb is not None and peak.rss_mb * 1024 >= own + 90 * 1024
        assert peak.pss_mb is not None and 0 < peak.pss_mb <= peak.rss_mb
        assert 0 < pss_kib(child.pid) <= rss_kib(child.pid)
    finally:
        child.kill()
        child.wait()
    assert rss_kib(child.pid) == 0 and pss_kib(child.pid) == 0  # an ended process counts nothing


def test_a_descendant_that_outlives_its_parent_is_a_survivor_and_is_ended(tmp_path: Path) -> None:
    """As Ray's actors after a flower-sim run: re-parented to init, still running."""
    pidfile = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(0.6)")
    with TreeMemory(interval=0.05) as mem:
        subprocess.run([sys.executable, "-c", code], check=True)  # the child exits, its child lives on
    grandchild = int(pidfile.read_text())
    try:
        assert grandchild not in descendants(os.getpid()) and mem.survivors() == [grandchild]
        end_processes(mem.survivors(), grace=2.0)
        assert mem.survivors() == [] and rss_kib(grandchild) == 0
    finally:
        if rss_kib(grandchild):
            os.kill(grandchild, 9)
