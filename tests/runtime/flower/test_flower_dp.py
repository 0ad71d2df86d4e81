"""Client-level DP (privacy.client) on the Flower engines: the ClientApps clip inside the shared
ClientRuntime and the ServerApp's FederationServer adds the noise, so with the same secret key a
Flower run equals the in-process run bit for bit (same noise std formula, same draws, same epsilon).

The apps run over an in-memory Grid (no Ray): the same ServerApp and ClientApp code as
``--engine flower-sim`` and a deployment. The same check through Ray took 106 s on the shared
2-core machine, so it is left out of the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from flower_testlib import DirectGrid, task_identity
from fedseg.config import ConfigError, config_from_dict
from fedseg.engine import privacy
from fedseg.engine.rundir import read_metrics
from fedseg.records import Field, Kind
from fedseg.runtime.common import config_text
from fedseg.runtime.flower.client_app import clear_cache, make_client_app
from fedseg.runtime.flower.keys import RunKey
from fedseg.runtime.flower.server_app import check_flower_config, run_server
from fedseg.runtime.sim import run_inprocess

pytestmark = pytest.mark.slow

DP = {"client": {"enabled": True, "noise_multiplier": 0.5, "clipping_norm": 0.3}}


@pytest.fixture(autouse=True)
def _flower_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(privacy, "_new_key", lambda: 2024)  # every run of a test gets the same secret key
    clear_cache()
    with task_identity():
        yield
    clear_cache()


def _privacy_lines(run_dir: Path) -> list[tuple[object, ...]]:
    keys = (Field.ROUND, Field.EPSILON, Field.DELTA, Field.NOISE_STD, Field.SAMPLE_RATE, Field.CLIENTS)
    return [tuple(r[k] for k in keys) for r in read_metrics(run_dir / "metrics.jsonl") if r[Field.KIND] == Kind.PRIVACY]


def test_client_dp_on_flower_equals_inprocess_bit_for_bit(tmp_path: Path) -> None:
    cfg = tiny_config("fedbn", rounds=2, sites=3, privacy=DP, federation={"fraction": 0.67})
    plain = run_inprocess(config_from_dict(tiny_config("fedbn", rounds=2, sites=3, federation={"fraction": 0.67})),
                          tmp_path / "plain", write_report=False)
    inproc = run_inprocess(config_from_dict(cfg), tmp_path / "inproc", write_report=False)
    run_config = {RunKey.CONFIG.value: config_text(config_from_dict(cfg)), RunKey.RUN_DIR.value: str(tmp_path / "fl")}
    grid = DirectGrid(make_client_app(run_config), [{"partition-id": i} for i in range(3)])
    flower = run_server(grid, run_config, engine="flower-sim", expected_nodes=3, write_report=False)
    for key, value in inproc.global_params.items():
        assert torch.equal(value, flower.global_params[key]), key
    assert any(not torch.equal(v, plain.global_params[k]) for k, v in inproc.global_params.items()
               if v.is_floating_point())
    lines = _privacy_lines(tmp_path / "fl")
    assert lines == _privacy_lines(tmp_path / "inproc")
    assert [line[-3:] for line in lines] == [(pytest.approx(0.5 * 0.3 / 2), 2 / 3, 2)] * 2
    assert flower.summary["privacy"] == inproc.summary["privacy"]


def test_flower_checks_refuse_fedmix_under_client_dp_before_any_site() -> None:
    cfg = config_from_dict(tiny_config("fedmix", privacy=DP))
    with pytest.raises(ConfigError, match="privacy.client.enabled: fedmix"):
        check_flower_config(cfg)
