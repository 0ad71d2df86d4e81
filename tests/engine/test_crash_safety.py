"""Crash safety: atomic writes, orphan temporary files, torn metrics lines, and a run directory
that is never overwritten by a fresh run."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.data.cache import ORPHAN_AGE, CaseCache
from fedseg.engine.rundir import MetricsError, RunDir, read_metrics
from fedseg.io.atomic import TEMP_SUFFIX, atomic_open, atomic_write_text, is_temp, remove_orphans, temp_path
from fedseg.runtime.common import RunError, prepare_run_dir
from fedseg.runtime.sim import run_inprocess

SRC = Path(__file__).resolve().parents[2] / "src" / "fedseg"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _orphan(folder: Path, name: str, pid: int, size: int = 10) -> Path:
    path = folder / f".{name}.{pid}.0123abcd{TEMP_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


# ---------------------------------------------------------------------------------- atomic writes
def test_atomic_open_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.pt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["a.pt"]
    with atomic_open(target) as fh:
        torch.save({"w": torch.ones(2)}, fh)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))


def test_temporary_names_are_hidden_and_match_no_reader_glob(tmp_path: Path) -> None:
    tmp = temp_path(tmp_path / "last.pt")
    assert tmp.parent == tmp_path and tmp.name.startswith(".last.pt.") and tmp.name.endswith(TEMP_SUFFIX)
    assert is_temp(tmp) and not is_temp(tmp_path / "last.pt")
    tmp.write_bytes(b"")
    for pattern in ("*.pt", "*.png", "*.npz", "*.json", "*.jsonl", "*.nii.gz"):
        assert list(tmp_path.glob(pattern)) == [], pattern


def test_a_writer_killed_mid_write_leaves_the_old_file_and_an_orphan_that_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "last.pt"
    atomic_write_text(target, "round 1")
    script = ("import os, signal, sys\nfrom fedseg.io.atomic import atomic_open\n"
              "with atomic_open(sys.argv[1]) as fh:\n    fh.write(b'x' * 4096); fh.flush()\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(target)], timeout=60)
    assert proc.returncode == -9
    orphans = [p for p in target.parent.iterdir() if is_temp(p)]
    assert len(orphans) == 1 and orphans[0].stat().st_size == 4096 and target.read_text() == "round 1"
    mine = _orphan(target.parent, "best.pt", os.getpid())  # a live writer's file (ours) is kept
    legacy = target.parent / f".last.pt.tmp{_dead_pid()}"  # the name older fedseg versions used
    legacy.write_bytes(b"y")
    assert set(remove_orphans(tmp_path, legacy=True)) == {orphans[0], legacy}
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["last.pt", mine.name])


def test_orphans_younger_than_min_age_are_kept(tmp_path: Path) -> None:
    path = _orphan(tmp_path, "x.npz", _dead_pid())
    assert remove_orphans(tmp_path, min_age=60) == [] and path.exists()
    old = time.time() - 120
    os.utime(path, (old, old))
    assert remove_orphans(tmp_path, min_age=60) == [path]


def test_the_case_cache_removes_old_orphans_when_it_opens(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config()).data
    stale = _orphan(tmp_path / "ab", "abcdef.npz", _dead_pid(), size=1000)
    fresh = _orphan(tmp_path / "cd", "cdef01.npz", _dead_pid())
    old = time.time() - ORPHAN_AGE - 10
    os.utime(stale, (old, old))
    CaseCache(tmp_path, cfg)
    assert not stale.exists() and fresh.exists()  # a recent one may belong to another machine's writer


def test_every_write_goes_through_the_atomic_helpers() -> None:
    """No module writes a file directly; only the helpers and two append-only streams do."""
    allowed = {"io/atomic.py", "io/safe.py"}
    streams = {("engine/rundir.py", "open"), ("runtime/flower/loopback.py", "open")}  # metrics.jsonl, a log
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            mode = next((a.value for a in node.args[1:2] if isinstance(a, ast.Constant)), None)
            writes = (name in ("write_text", "write_bytes", "mkstemp", "fdopen")
                      or (name == "save" and owner in ("torch", "nib", "np"))
                      or (name in ("savez", "savez_compressed") and owner == "np" and not node.args)
                      or (name == "open" and isinstance(mode, str) and any(c in mode for c in "wax+")))
            if writes and (rel, name) not in streams:
                problems.append(f"{rel}:{node.lineno} {ast.unparse(func)}")
    assert not problems, "write through fedseg.io.atomic / fedseg.io.safe:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------- metrics.jsonl
def test_a_torn_last_metrics_line_is_dropped_and_repaired_before_the_next_append(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.create()
    run.append_metrics([{"round": 1, "kind": "round"}, {"round": 2, "kind": "round"}])
    with open(run.metrics, "a", encoding="utf-8") as fh:
        fh.write('{"round": 3, "ki')  # a kill inside the write
    assert [r["round"] for r in read_metrics(run.metrics)] == [1, 2]
    run.append_metrics([{"round": 3, "kind": "round"}])
    assert run.metrics.read_text().splitlines()[-1] == '{"kind": "round", "round": 3}'
    assert [r["round"] for r in read_metrics(run.metrics)] == [1, 2, 3]


def test_a_malformed_complete_metrics_line_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\nnot json\n{"round": 2}\n')
    with pytest.raises(MetricsError, match=r"metrics\.jsonl:2: not a JSON record"):
        read_metrics(path)
    path.write_text('{"round": 1}\n[1, 2]\n')
    with pytest.raises(MetricsError, match=r"metrics\.jsonl:2: a JSON list"):
        read_metrics(path)


# ---------------------------------------------------------------------------------- run directory
def test_a_fresh_run_refuses_a_directory_that_holds_a_run(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config(rounds=1))
    run_inprocess(cfg, tmp_path / "r", write_report=False)
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    with pytest.raises(RunError) as caught:
        run_inprocess(cfg, tmp_path / "r", write_report=False)
    message = str(caught.value)
    assert str(tmp_path / "r") in message and "checkpoint of round 1 of 1" in message
    assert "--resume" in message and "--out" in message and "run-dir" in message
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before  # nothing touched
    metrics = tmp_path / "r" / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join([lines[0], "{torn\n", *lines[1:]]))
    with pytest.raises(RunError, match=r"metrics\.jsonl:2: not a JSON record"):  # refused before anything resumes
        prepare_run_dir(cfg, tmp_path / "r", resume=True, command=None)
    metrics.write_text("".join([*lines, '{"round": 2, "ki']))  # a torn last line: resumable
    prepare_run_dir(cfg, tmp_path / "r", resume=True, command=None)


def test_a_fresh_run_refuses_a_directory_that_is_no_run(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config(rounds=1))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match=r"mine is not empty \(files notes\.txt\) and holds no fedseg run.*--out"):
        prepare_run_dir(cfg, tmp_path / "mine", resume=False, command=None)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="is a file, not a run directory"):
        prepare_run_dir(cfg, tmp_path / "file", resume=False, command=None)


def test_a_directory_prepared_but_not_trained_may_start_again_with_the_same_config(tmp_path: Path) -> None:
    """What ``fedseg run --engine flower-sim`` does before its ServerApp prepares the same directory,
    and a run that failed while loading its data."""
    cfg = config_from_dict(tiny_config(rounds=1))
    run = prepare_run_dir(cfg, tmp_path / "r", resume=False, command="first")
    (run.root / "splits.json").write_text("{}")
    (run.root / "client_states").mkdir()
    _orphan(run.root / "checkpoints", "last.pt", _dead_pid())
    prepare_run_dir(cfg, tmp_path / "r", resume=False, command="second")
    assert run.command.read_text() == "second\n" and list((run.root / "checkpoints").iterdir()) == []
    other = config_from_dict(tiny_config(rounds=2))
    with pytest.raises(RunError, match="already holds a run"):
        prepare_run_dir(other, tmp_path / "r", resume=False, command=None)
    run.append_metrics([{"round": 1}])
    with pytest.raises(RunError, match=r"already holds a run \(metrics\.jsonl but no checkpoint yet\)"):
        prepare_run_dir(cfg, tmp_path / "r", resume=False, command=None)
    with pytest.raises(RunError, match=r"--resume: no checkpoint .*stopped before its first round completed.*delete"):
        prepare_run_dir(cfg, tmp_path / "r", resume=True, command=None)


@pytest.mark.slow
def test_the_demo_replaces_only_its_own_runs_and_works_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedseg.cli import demo

    tiny = tiny_config(rounds=1)
    monkeypatch.setattr(demo, "DEMO_CONFIG", {k: v for k, v in tiny.items() if k != "algorithm"})
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115 (closed with the test)
    for _ in range(2):
        demo.run_demo(tmp_path / "demo", console=console, command="fedseg demo")
    console.file.close()
    assert (tmp_path / "demo" / "report.md").is_file()
    for algorithm in ("fedavg", "local"):
        records = read_metrics(tmp_path / "demo" / algorithm / "metrics.jsonl")
        rounds = [r["round"] for r in records if r["kind"] == "round"]
        assert rounds == [1]
        assert json.loads((tmp_path / "demo" / algorithm / "checkpoints" / "last.json").read_text())["round"] == 1
