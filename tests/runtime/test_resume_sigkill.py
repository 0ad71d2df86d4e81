"""A run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run: once
after round 2 of 4 (the acceptance check of the foundation issue), and repeatedly at seeded random
moments, with every file whole and no temporary file left behind (issue 11)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config
from fedseg.engine.state_store import ClientStateStore
from fedseg.io.atomic import is_temp
from fedseg.io.safe import load_checkpoint

pytestmark = pytest.mark.slow


def _fedseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedseg.cli.main", *args]


def _checkpoint_round(run_dir: Path) -> int:
    meta = run_dir / "checkpoints" / "last.json"
    try:
        return int(json.loads(meta.read_text())["round"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_after_round_two_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = tiny_config("fedprox", rounds=4, sites=2)
    cfg["algorithm"]["mu"] = 0.01
    cfg["train"]["optimizer_state"] = "persist"  # client state must survive the kill too
    cfg["data"]["synthetic"]["size"] = 32
    cfg["data"]["synthetic"]["samples_per_site"] = [40, 30]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    full = tmp_path / "full"
    subprocess.run(_fedseg("run", str(path), "--out", str(full)), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_fedseg("run", str(path), "--out", str(killed)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while _checkpoint_round(killed) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"run ended or timed out before round 2 (rc={proc.returncode})")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert _checkpoint_round(killed) in (2, 3)  # killed during round 3 (or right after it)

    subprocess.run(_fedseg("run", str(path), "--out", str(killed), "--resume"), check=True, env=env,
                   capture_output=True, timeout=300)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert a["round"] == b["round"] == 4
    for key, value in a["global_params"].items():
        assert torch.equal(value, b["global_params"][key]), key
    rounds = [json.loads(line)["round"] for line in (killed / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "round"]
    assert rounds == [1, 2, 3, 4]


def _progress(run_dir: Path) -> tuple[int, int]:
    """(checkpoint round, bytes of metrics.jsonl): changes whenever the run has done some work."""
    metrics = run_dir / "metrics.jsonl"
    return _checkpoint_round(run_dir), metrics.stat().st_size if metrics.is_file() else 0


def _client_states(run_dir: Path) -> dict[str, object]:
    snapshot = load_checkpoint(run_dir / "checkpoints" / "last.pt")["client_states"]
    store = ClientStateStore(run_dir / "client_states", 0)
    store.restore(snapshot)
    return {c: store.load(c) for c in sorted({*snapshot["memory"], *snapshot["disk"]})}


def _assert_equal(a: object, b: object, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _assert_whole(run_dir: Path) -> None:
    """No temporary file, every checkpoint and JSON file complete, metrics.jsonl whole lines."""
    assert [str(p) for p in run_dir.rglob("*") if is_temp(p, legacy=True)] == []
    for path in run_dir.rglob("*.pt"):
        load_checkpoint(path)
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())
    text = (run_dir / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())


def _fork_run(cfg: dict[str, object], run_dir: Path, *, resume: bool) -> int:
    """Start ``run_inprocess`` in a forked child (imports already done: a start costs
    milliseconds, not seconds); returns its pid. The child exits 0 when the run finished."""
    from fedseg.config import config_from_dict
    from fedseg.runtime.sim import run_inprocess

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            run_inprocess(config_from_dict(cfg), run_dir, resume=resume, write_report=False)
            code = 0
        except BaseException:  # noqa: BLE001 - report anything, then leave without pytest's teardown
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, *, block: bool) -> int | None:
    """The child's exit status (negative: killed by that signal), None while it runs."""
    done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    if done == 0:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def test_repeated_random_sigkill_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """Kill an in-process run (a forked child) at seeded random moments, each after it has made
    some progress since it started, resume each time, and compare everything the run leaves with
    an uninterrupted run's."""
    cfg = tiny_config("fedprox", rounds=5, sites=2)
    cfg["train"]["optimizer_state"] = "persist"  # client state that must survive every kill
    cfg["federation"]["state_spill_mb"] = 0  # client states in files, rewritten every round
    full = tmp_path / "full"
    pid = _fork_run(cfg, full, resume=False)
    status = None
    while _progress(full) == (0, 0) and (status := _wait(pid, block=False)) is None:
        time.sleep(0.005)
    t0 = time.monotonic()
    assert (_wait(pid, block=True) if status is None else status) == 0
    span = time.monotonic() - t0  # first progress to the end: the kill delays scale with this machine now

    rng = random.Random(11)
    killed = tmp_path / "killed"
    kills, scale = 0, 0.25
    for _ in range(24):  # each kill lands after some progress, at a random delay
        fresh = _checkpoint_round(killed) == 0
        if fresh and killed.exists():  # stopped before its first checkpoint: the error says to start again
            shutil.rmtree(killed)
        start = _progress(killed)
        pid = _fork_run(cfg, killed, resume=not fresh)
        deadline = time.monotonic() + 120
        while _progress(killed) == start and _wait(pid, block=False) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, scale) * span)  # at most a fraction of the run per attempt
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = _wait(pid, block=True)
        if status == 0:  # finished before the kill
            if kills >= 3:
                break
            # the machine got faster than when `span` was measured: start again with shorter delays
            shutil.rmtree(killed)
            kills, scale = 0, scale / 2
            continue
        assert status == -signal.SIGKILL, f"the run failed (exit {status}) before it was killed"
        kills += 1
    else:
        assert kills >= 3, f"only {kills} kills landed; the run is too fast for this test"
        assert _wait(_fork_run(cfg, killed, resume=True), block=True) == 0

    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(killed / "checkpoints" / "last.pt")
    assert a["round"] == b["round"] == 5
    _assert_equal(a["global_params"], b["global_params"], "global_params")
    _assert_equal(a["server_state"], b["server_state"], "server_state")
    _assert_equal(_client_states(full), _client_states(killed), "client_states")
    best = [load_checkpoint(d / "checkpoints" / "best.pt") for d in (full, killed)]
    _assert_equal(best[0], best[1], "best.pt")
    assert json.loads((full / "summary.json").read_text()) == json.loads((killed / "summary.json").read_text())
    rounds = [json.loads(line)["round"] for line in (killed / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "round"]
    assert rounds == [1, 2, 3, 4, 5]
    _assert_whole(killed)


def test_sigkill_and_resume_with_streamed_folder_data_and_loader_workers(tmp_path: Path) -> None:
    """Folder data streamed from the case cache through two DataLoader workers, on patches with
    flips: killed after round 2 and resumed, the weights equal an uninterrupted run's (issue 13)."""
    from fake_datasets import write_png_site

    for site in ("A", "B"):
        write_png_site(tmp_path / "data" / site, n_groups=6)
    cfg = tiny_config("fedavg", rounds=4, sites=2)
    cfg["data"] = {"source": "folder", "root": str(tmp_path / "data"), "image_size": [16, 16],
                   "cache_dir": str(tmp_path / "cache")}
    cfg["train"].update({"num_workers": 2, "patch_size": [8, 8], "samples_per_volume": 2,
                         "augment": {"enabled": True, "flip_prob": 0.5, "rotate_prob": 0.0, "affine_prob": 0.0,
                                     "elastic_prob": 0.0}})
    full = tmp_path / "full"
    assert _wait(_fork_run(cfg, full, resume=False), block=True) == 0
    killed = tmp_path / "killed"
    pid = _fork_run(cfg, killed, resume=False)
    deadline = time.monotonic() + 120
    while _checkpoint_round(killed) < 2 and _wait(pid, block=False) is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    assert _wait(pid, block=True) == -signal.SIGKILL and _checkpoint_round(killed) in (2, 3)
    assert _wait(_fork_run(cfg, killed, resume=True), block=True) == 0
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(killed / "checkpoints" / "last.pt")
    assert a["round"] == b["round"] == 4
    _assert_equal(a["global_params"], b["global_params"], "global_params")
