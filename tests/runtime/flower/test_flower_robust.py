"""Robust aggregation and the attack simulator on Flower: the ServerApp and ClientApps (driven in this
process) end bit for bit where the in-process engine ends, attacker and rule included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_config
from flower_testlib import DirectGrid
from fedseg.config import ConfigError, config_from_dict
from fedseg.runtime.common import config_text
from fedseg.runtime.flower.client_app import make_client_app
from fedseg.runtime.flower.keys import RunKey
from fedseg.runtime.flower.server_app import ServerResult, run_server
from fedseg.runtime.sim import run_inprocess

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("flower_process")]  # whole federations, no network


def _run_flower(tmp_path: Path, cfg_dict: dict[str, Any]) -> ServerResult:
    cfg = config_from_dict(cfg_dict)
    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(tmp_path / "flower")}
    grid = DirectGrid(make_client_app(run_config), [{"partition-id": i} for i in range(cfg.data.synthetic.num_sites)])
    return run_server(grid, run_config, engine="flower-sim", expected_nodes=cfg.data.synthetic.num_sites,
                      write_report=False)


@pytest.mark.parametrize(("attack", "aggregation"), [
    ({"kind": "scale", "sites": ["site1"]}, {"rule": "median"}),
    ({"kind": "label_flip", "sites": ["site0"]}, {"rule": "krum", "num_malicious": 0}),
])
def test_attacked_robust_run_on_flower_equals_inprocess(tmp_path: Path, attack: dict[str, Any],
                                                        aggregation: dict[str, Any]) -> None:
    cfg = tiny_config("fedavg", rounds=2, sites=3, attack=attack, aggregation=aggregation)
    inproc = run_inprocess(config_from_dict(cfg), tmp_path / "inproc", write_report=False)
    flower = _run_flower(tmp_path, cfg)
    for key, value in inproc.global_params.items():
        assert torch.equal(value, flower.global_params[key]), key
    info = json.loads((tmp_path / "flower" / "run_info.json").read_text())
    assert info["attack"]["sites"] == attack["sites"] and info["aggregation"]["rule"] == aggregation["rule"]


def test_the_serverapp_refuses_a_rule_its_sampled_clients_cannot_serve(tmp_path: Path) -> None:
    cfg = tiny_config("fedavg", rounds=1, sites=3, aggregation={"rule": "bulyan", "num_malicious": 1})
    with pytest.raises(ConfigError, match="at least 7 clients per round, got 3"):
        _run_flower(tmp_path, cfg)
