from __future__ import annotations

from pathlib import Path

import torch

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.engine.state_store import ClientStateStore, state_nbytes
from fedseg.runtime.sim import run_inprocess


def test_small_states_stay_in_memory_large_ones_spill_to_disk(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path, spill_bytes=1000)
    small = {"a": torch.zeros(10)}
    large = {"b": torch.zeros(1000), "nested": {"c": [torch.ones(2)]}}
    assert state_nbytes(large) == 4008
    store.save("s", small, rnd=1)
    store.save("l", large, rnd=1)
    assert list(tmp_path.glob("*.pt")) == [tmp_path / "l.r1.pt"]
    assert torch.equal(store.load("l")["b"], large["b"]) and store.load("s") is small
    store.save("l", large, rnd=2)
    store.prune()
    assert [p.name for p in tmp_path.glob("*.pt")] == ["l.r2.pt"]
    snap = store.snapshot()
    other = ClientStateStore(tmp_path, spill_bytes=1000)
    other.restore(snap)
    assert torch.equal(other.load("l")["nested"]["c"][0], torch.ones(2))
    assert other.load("unknown") == {}


def test_spilled_states_give_the_same_run(tmp_path: Path) -> None:
    cfg = tiny_config("fedbn", rounds=2)
    cfg["train"]["optimizer_state"] = "persist"
    mem = run_inprocess(config_from_dict(cfg), tmp_path / "mem", write_report=False)
    cfg["federation"]["state_spill_mb"] = 0
    disk = run_inprocess(config_from_dict(cfg), tmp_path / "disk", write_report=False)
    assert sorted(p.name for p in (tmp_path / "disk" / "client_states").glob("*.pt")) == ["site0.r2.pt", "site1.r2.pt"]
    for key, value in mem.global_params.items():
        assert torch.equal(value, disk.global_params[key])
