"""pFedSAM on both engines: the Flower ServerApp/ClientApps (in-memory Grid) end where the
in-process engine ends, with the frozen encoder rebuilt from the initial model in every ClientApp
and each client's experts kept in its Flower state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.runtime.common import config_text
from fedseg.runtime.sim import run_inprocess

pytestmark = pytest.mark.slow


def test_pfedsam_on_flower_matches_inprocess(tmp_path: Path, flower_process: None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "flower"))
    from flower_testlib import DirectGrid

    from fedseg.runtime.flower.client_app import make_client_app
    from fedseg.runtime.flower.keys import RunKey
    from fedseg.runtime.flower.server_app import run_server

    cfg_dict = tiny_config("pfedsam", rounds=2, train={"optimizer_state": "persist"})
    inproc = run_inprocess(config_from_dict(cfg_dict), tmp_path / "inproc", write_report=False)
    cfg = config_from_dict({**cfg_dict, "engine": "flower-sim"})
    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(tmp_path / "flower")}
    grid = DirectGrid(make_client_app(run_config), [{"partition-id": i} for i in range(2)])
    flower = run_server(grid, run_config, engine="flower-sim", expected_nodes=2, write_report=False)

    assert inproc.global_params.keys() == flower.global_params.keys()
    for key, value in inproc.global_params.items():
        assert torch.equal(flower.global_params[key], value), key

    def personal(run: Path) -> dict[tuple[str, str], float]:
        return {(r["site"], r["selection"]): r["dice"] for r in read_metrics(run / "metrics.jsonl")
                if r.get("kind") == "eval" and r.get("split") == "test" and r["model"] == "personal"}

    expected = personal(tmp_path / "inproc")
    assert expected and expected == personal(tmp_path / "flower")  # the same personal experts on both engines
