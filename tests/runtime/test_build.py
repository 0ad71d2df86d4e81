from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fedseg.runtime.build as build
import fedseg.runtime.sim as sim
from conftest import tiny_config
from fedseg.algorithms import Algorithm, ClientContext, build_algorithm
from fedseg.config import RunConfig, config_from_dict
from fedseg.data.build import build_federated_data
from fedseg.engine.rundir import RunDir
from fedseg.models import build_model
from fedseg.records import InfoKey
from fedseg.runtime.build import POOLED_CLIENT, build_federation
from fedseg.runtime.common import DataSpec, RunError
from fedseg.runtime.sim import run_inprocess

CPU = torch.device("cpu")


@dataclass
class StartSpy(Algorithm):
    """FedAvg that records the model each client starts its round from (after reset and broadcast)."""

    seen: list[tuple[str, int, dict[str, torch.Tensor]]] = field(default_factory=list)

    def on_round_start(self, model: nn.Module, ctx: ClientContext) -> None:
        self.seen.append((ctx.client_id, ctx.round, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}))


def _cfg(**extra: Any) -> RunConfig:
    return config_from_dict(tiny_config(rounds=1, **extra))


def _pretrained(path: Path, cfg: RunConfig, seed: int = 123, **model: Any) -> dict[str, torch.Tensor]:
    """Save a model of the run's architecture (or ``model`` overrides), seeded differently from the run."""
    torch.manual_seed(seed)
    net = build_model(cfg.model.model_copy(update=model), 2, 1, 2)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save(state, path)
    return state


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_starts_from_the_init_checkpoint_on_the_server_and_every_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg()
    want = _pretrained(tmp_path / "init.pt", cfg)
    seeded = build_federation(cfg, DataSpec(2, 1, 2), CPU, engine="inprocess").init_params
    assert not _equal(seeded, want)  # the file, not the seeded init, is what the run must start from
    cfg = _cfg(model={"init_checkpoint": str(tmp_path / "init.pt")})
    spy = StartSpy()
    monkeypatch.setattr(sim, "build_algorithm", lambda spec: spy)
    run_inprocess(cfg, tmp_path / "run", write_report=False)
    assert sorted((c, r) for c, r, _ in spy.seen) == [("site0", 1), ("site1", 1)]
    assert all(_equal(state, want) for _, _, state in spy.seen)
    info = json.loads(RunDir(tmp_path / "run").info.read_text())
    digest = hashlib.sha256((tmp_path / "init.pt").read_bytes()).hexdigest()
    assert info[InfoKey.INIT_CHECKPOINT] == {"path": str(tmp_path / "init.pt"), "sha256": digest}


def test_server_and_client_builds_share_the_initial_weights(tmp_path: Path) -> None:
    """What the ServerApp builds (no data) and what a ClientApp builds (its own site) start alike."""
    path = tmp_path / "init.pt"
    want = _pretrained(path, _cfg())
    cfg = _cfg(model={"init_checkpoint": str(path)})
    data = build_federated_data(cfg.data, cfg.seed)
    run = RunDir(tmp_path / "server")
    run.create()
    server = build_federation(cfg, DataSpec.of(data), CPU, engine="flower", sites=["site0", "site1"], run=run)
    client = build_federation(cfg, DataSpec.of(data), CPU, engine="flower", data=[data.site("site1")])
    assert _equal(server.server.global_params, want) and _equal(server.init_params, want)
    assert _equal(client.client("site1", 1).init_params, want)
    assert server.init_digest == client.init_digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_checkpoint_of_another_model_is_refused_before_training(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    _pretrained(path, _cfg(), channels=[4, 16])
    run_dir = tmp_path / "run"
    with pytest.raises(RunError, match=r"model.init_checkpoint: .*wide\.pt does not fit the model.*shape mismatch"):
        run_inprocess(_cfg(model={"init_checkpoint": str(path)}), run_dir, write_report=False)
    assert not RunDir(run_dir).checkpoint.exists() and not RunDir(run_dir).metrics.exists()
    with pytest.raises(RunError, match=r"no such file .*absent\.pt"):
        run_inprocess(_cfg(model={"init_checkpoint": str(tmp_path / "absent.pt")}), tmp_path / "r2",
                      write_report=False)


def test_a_pickled_module_is_refused_by_the_run(tmp_path: Path) -> None:
    """torch.save(model) instead of its state dict: unpickling it would import and run code."""
    path = tmp_path / "whole_model.pt"
    torch.save(build_model(_cfg().model, 2, 1, 2), path)
    with pytest.raises(RunError, match=r"whole_model\.pt: refused by torch.load\(weights_only=True\).*Unsupported global"):
        run_inprocess(_cfg(model={"init_checkpoint": str(path)}), tmp_path / "run", write_report=False)


def test_resume_refuses_other_initial_weights(tmp_path: Path) -> None:
    path = tmp_path / "init.pt"
    _pretrained(path, _cfg())
    cfg = _cfg(model={"init_checkpoint": str(path)})
    run_inprocess(cfg, tmp_path / "run", write_report=False)
    run_inprocess(cfg, tmp_path / "run", resume=True, write_report=False)  # same file: fine
    _pretrained(path, _cfg(), seed=5)
    with pytest.raises(RunError, match="--resume: the initial weights differ"):
        run_inprocess(cfg, tmp_path / "run", resume=True, write_report=False)


def test_centralized_clients_and_engines() -> None:
    cfg = config_from_dict(tiny_config("centralized", rounds=1))
    data = build_federated_data(cfg.data, cfg.seed)
    fed = build_federation(cfg, DataSpec.of(data), CPU, engine="inprocess", data=data.sites)
    assert fed.fit_clients == [POOLED_CLIENT] and fed.sites == ["site0", "site1"]
    assert {n: r.client_index for n, r in fed.clients.items()} == {POOLED_CLIENT: 0, "site0": 1, "site1": 2}
    with pytest.raises(RunError, match="pools every site's training data.*--engine inprocess"):
        build_federation(cfg, DataSpec.of(data), CPU, engine="flower", data=[data.site("site0")])


def test_a_client_build_takes_the_server_index_and_has_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg()
    data = build_federated_data(cfg.data, cfg.seed)
    calls: list[object] = []
    monkeypatch.setattr(build, "build_algorithm", lambda spec: calls.append(spec) or build_algorithm(spec))
    fed = build_federation(cfg, DataSpec.of(data), CPU, engine="flower", data=[data.site("site1")])
    assert len(calls) == 1  # one algorithm per build, however many runtimes follow
    runtime = fed.client("site1", 1)
    assert runtime.client_index == 1 and fed.client("site1", 1) is runtime
    assert runtime.model is fed.model and runtime.algorithm is fed.algorithm and len(calls) == 1
    assert fed.client("site1").client_index == 0  # default: its position among the clients held here
    with pytest.raises(KeyError, match="site0"):
        fed.client("site0")
    with pytest.raises(RunError, match="without a run directory"):
        _ = fed.server
    inproc = build_federation(cfg, DataSpec.of(data), CPU, engine="inprocess", data=data.sites)
    assert _equal(inproc.init_params, fed.init_params)  # the seeded init is the same in every process
    assert {n: r.client_index for n, r in inproc.clients.items()} == {"site0": 0, "site1": 1}
