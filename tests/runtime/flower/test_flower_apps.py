"""The fedseg ServerApp and ClientApp wired through an in-memory Grid (no Ray, no network): the
same FederationServer and ClientRuntime as in-process, so results must match bit for bit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_config
from flower_testlib import DirectGrid, task_identity
from fedseg.algorithms import build_algorithm
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.models import build_model
from fedseg.runtime.common import RunError, config_text
from fedseg.runtime.flower.client_app import clear_cache, make_client_app
from fedseg.runtime.flower.executor import RECEIVED_KEYS_FILE, FlowerRunError
from fedseg.runtime.flower.keys import Record, RunKey
from fedseg.runtime.flower.records import update_from_content
from fedseg.runtime.flower.server_app import ServerResult, run_server
from fedseg.runtime.sim import run_inprocess

pytestmark = pytest.mark.slow  # whole federations (seconds each), no network


@pytest.fixture(autouse=True)
def _flower_process() -> Iterator[None]:
    clear_cache()
    with task_identity():
        yield
    clear_cache()


def _run_flower(tmp_path: Path, cfg_dict: dict[str, Any], *, nodes: int | None = None,
                expected_nodes: int | None = None) -> tuple[ServerResult, DirectGrid]:
    cfg = config_from_dict(cfg_dict)
    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(tmp_path / "flower")}
    count = nodes if nodes is not None else cfg.data.synthetic.num_sites
    grid = DirectGrid(make_client_app(run_config), [{"partition-id": i} for i in range(count)])
    result = run_server(grid, run_config, engine="flower-sim", expected_nodes=expected_nodes, write_report=False)
    return result, grid


def _records(run_dir: Path, *kinds: str) -> list[tuple[Any, ...]]:
    keys = ("round", "site", "kind", "model", "split", "bytes_up", "bytes_down", "dice", "loss", "n")
    return [tuple(r.get(k) for k in keys) for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] in kinds]


def test_fedavg_on_flower_equals_inprocess_bit_for_bit(tmp_path: Path) -> None:
    cfg = tiny_config("fedavg", rounds=3, sites=3)
    inproc = run_inprocess(config_from_dict(cfg), tmp_path / "inproc", write_report=False)
    flower, _ = _run_flower(tmp_path, cfg, expected_nodes=3)
    assert inproc.global_params.keys() == flower.global_params.keys()
    for key, value in inproc.global_params.items():
        assert torch.equal(value, flower.global_params[key]), key
    # per-site metrics and bytes on the wire: the same records, the same numbers
    assert _records(tmp_path / "inproc", "train", "eval", "round") == _records(tmp_path / "flower", "train", "eval",
                                                                                "round")
    info = json.loads((tmp_path / "flower" / "run_info.json").read_text())
    assert info["engine"] == "flower-sim" and info["sites"] == ["site0", "site1", "site2"]
    assert "engine: flower-sim" in (tmp_path / "flower" / "config.yaml").read_text()


def test_fedbn_norm_layers_never_leave_the_client(tmp_path: Path) -> None:
    cfg = tiny_config("fedbn", rounds=2, sites=2)
    _, grid = _run_flower(tmp_path, cfg, expected_nodes=2)
    model = build_model(config_from_dict(cfg).model, 2, 1, 2)
    norm = build_algorithm({"name": "fedbn"}).local_keys(model)
    assert norm
    for context in grid.contexts.values():
        assert Record.STATE_TENSORS.value in context.state.array_records  # personal layers kept on the node
    received = json.loads((tmp_path / "flower" / RECEIVED_KEYS_FILE).read_text())
    assert set(received) == {"site0", "site1"}
    for site, keys in received.items():
        assert not norm & set(keys["params"]), site
        assert set(keys["params"]) == set(model.state_dict()) - norm
    assert sum(m.metadata.message_type == "train" for m in grid.sent) == 4  # 2 rounds x 2 sites
    personal = [r for r in read_metrics(tmp_path / "flower" / "metrics.jsonl")
                if r.get("model") == "personal" and r.get("split") == "test"]
    assert {r["site"] for r in personal} == {"site0", "site1"}


def test_train_reply_holds_only_the_update(tmp_path: Path) -> None:
    """What a FedBN client sends: shared parameters and scalars; its norm layers go to context.state."""
    cfg = tiny_config("fedbn", rounds=1, sites=2)
    run_config = {RunKey.CONFIG.value: config_text(config_from_dict(cfg)),
                  RunKey.RUN_DIR.value: str(tmp_path / "flower")}
    app = make_client_app(run_config)
    sent: list[Any] = []

    class Spy(DirectGrid):
        def push_messages(self, messages: Any) -> Any:
            ids = list(super().push_messages(messages))
            sent.extend(self.replies[i] for i in ids)
            return ids

    grid = Spy(app, [{"partition-id": 0}, {"partition-id": 1}])
    run_server(grid, run_config, engine="flower-sim", expected_nodes=2, write_report=False)
    model = build_model(config_from_dict(cfg).model, 2, 1, 2)
    norm = build_algorithm({"name": "fedbn"}).local_keys(model)
    train = [r for r in sent if Record.UPDATE.value in r.content.config_records]
    assert len(train) == 2
    for reply in train:
        assert set(reply.content.array_records) == {Record.PARAMS.value}
        update, record = update_from_content(reply.content)
        assert not norm & set(update.params)
        assert record["kind"] == "train"


def test_centralized_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="pools every site's training data.*--engine inprocess"):
        _run_flower(tmp_path, tiny_config("centralized"), expected_nodes=2)


def test_a_missing_site_is_named_after_the_connect_timeout(tmp_path: Path) -> None:
    cfg = tiny_config("fedavg", sites=2, flower={"connect_timeout": 0.2})
    with pytest.raises(FlowerRunError, match="only 1 of 2 sites connected.*missing: site1"):
        _run_flower(tmp_path, cfg, nodes=1)


def test_a_client_error_reaches_the_server_with_the_site_named(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config("fedavg", sites=2))
    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(tmp_path / "bad")}
    grid = DirectGrid(make_client_app(run_config), [{"partition-id": 5}])
    with pytest.raises(FlowerRunError, match="answered the hello message with an error.*partition-id=5, but the "
                                             "data has 2 sites"):
        run_server(grid, run_config, engine="flower-sim", expected_nodes=1, write_report=False)


def test_central_dp_clips_and_noises_through_flower(tmp_path: Path) -> None:
    plain, _ = _run_flower(tmp_path / "plain", tiny_config("fedavg", rounds=1, sites=2), expected_nodes=2)
    clear_cache()
    dp_cfg = tiny_config("fedavg", rounds=1, sites=2, flower={"dp": {"enabled": True, "noise_multiplier": 0.1,
                                                                      "clipping_norm": 0.5}})
    noisy, grid = _run_flower(tmp_path / "dp", dp_cfg, expected_nodes=2)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert all(m.content.config_records[Record.CONFIG.value]["clipping_norm"] == 0.5 for m in train)
    floating = [k for k, v in plain.global_params.items() if v.is_floating_point()]
    assert any(not torch.equal(plain.global_params[k], noisy.global_params[k]) for k in floating)
    # integer buffers stay on the clients under DP: the global ones are never updated
    for key, value in noisy.global_params.items():
        if not value.is_floating_point():
            assert int(value.max()) == 0, key


def test_dp_refuses_algorithms_with_local_layers(tmp_path: Path) -> None:
    cfg = tiny_config("fedbn", sites=2, flower={"dp": {"enabled": True}})
    with pytest.raises(RunError, match="fedbn keeps .* local"):
        _run_flower(tmp_path, cfg, expected_nodes=2)


def test_update_codecs_pass_through_flower_unchanged(tmp_path: Path) -> None:
    """Codecs run inside ClientRuntime/FederationServer; Flower carries their packed tensors."""
    cfg = tiny_config("fedbn", rounds=2, sites=2,
                      codec={"up": [{"name": "topk", "ratio": 0.1}, {"name": "int8"}], "down": [{"name": "int8"}]})
    inproc = run_inprocess(config_from_dict(cfg), tmp_path / "inproc", write_report=False)
    flower, _ = _run_flower(tmp_path, cfg, expected_nodes=2)
    for key, value in inproc.global_params.items():
        assert torch.equal(value, flower.global_params[key]), key
    assert _records(tmp_path / "inproc", "train", "round") == _records(tmp_path / "flower", "train", "round")
