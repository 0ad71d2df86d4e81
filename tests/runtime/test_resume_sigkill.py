"""A run killed with SIGKILL after round 2 of 4 and resumed ends with the same weights as an
uninterrupted run (the acceptance check of the foundation issue)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config

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
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=False)
    assert a["round"] == b["round"] == 4
    for key, value in a["global_params"].items():
        assert torch.equal(value, b["global_params"][key]), key
    rounds = [json.loads(line)["round"] for line in (killed / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "round"]
    assert rounds == [1, 2, 3, 4]
