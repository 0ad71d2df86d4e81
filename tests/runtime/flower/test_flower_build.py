"""The ServerApp and the ClientApps build their federation with the in-process builder: a run from
``model.init_checkpoint`` on Flower ends bit-identical to the same run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from flower_testlib import DirectGrid, task_identity
from fedseg.config import config_from_dict
from fedseg.models import build_model
from fedseg.records import InfoKey
from fedseg.runtime.common import RunError, config_text
from fedseg.runtime.flower.client_app import clear_cache, make_client_app
from fedseg.runtime.flower.keys import RunKey
from fedseg.runtime.flower.server_app import run_server
from fedseg.runtime.flower.simulation import run_flower_simulation
from fedseg.runtime.sim import run_inprocess

pytestmark = pytest.mark.slow


def test_init_checkpoint_run_on_flower_equals_inprocess(tmp_path: Path) -> None:
    clear_cache()  # a fresh ClientApp process
    try:
        with task_identity():
            _compare(tmp_path)
    finally:
        clear_cache()


def _compare(tmp_path: Path) -> None:
    base = tiny_config("fedbn", rounds=2, sites=2)
    torch.manual_seed(123)
    torch.save(build_model(config_from_dict(base).model, 2, 1, 2).state_dict(), tmp_path / "init.pt")
    cfg = config_from_dict(tiny_config("fedbn", rounds=2, sites=2, model={"init_checkpoint": str(tmp_path / "init.pt")}))
    seeded = run_inprocess(config_from_dict(base), tmp_path / "seeded", write_report=False)
    inproc = run_inprocess(cfg, tmp_path / "inproc", write_report=False)
    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(tmp_path / "flower")}
    grid = DirectGrid(make_client_app(run_config), [{"partition-id": i} for i in range(2)])
    flower = run_server(grid, run_config, engine="flower-sim", expected_nodes=2, write_report=False)
    assert any(not torch.equal(v, inproc.global_params[k]) for k, v in seeded.global_params.items())
    for key, value in inproc.global_params.items():
        assert torch.equal(value, flower.global_params[key]), key
    infos = [json.loads((tmp_path / name / "run_info.json").read_text()) for name in ("inproc", "flower")]
    assert infos[0][InfoKey.INIT_CHECKPOINT] == infos[1][InfoKey.INIT_CHECKPOINT]


def test_a_bad_init_checkpoint_stops_flower_sim_before_ray_starts(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not torch")
    cfg = config_from_dict(tiny_config(rounds=1, model={"init_checkpoint": str(tmp_path / "bad.pt")}))
    with pytest.raises(RunError, match=r"model.init_checkpoint: .*bad\.pt: not a readable torch checkpoint"):
        run_flower_simulation(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "run_info.json").exists()
