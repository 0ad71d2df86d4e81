"""The interface carries what the method families need: local validation scores for aggregation
weights, tensor extras both ways, server state, and a post-federation local phase."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from conftest import tiny_config
from fedseg.algorithms.base import Aggregate, Algorithm, ClientContext, LocalTrainer, Weighting, norm_layer_keys
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.runtime.sim import run_inprocess
from fedseg.types import Broadcast, ClientUpdate, Params, ServerState


@dataclass
class ScoreWeighted(Algorithm):
    """Weights by local validation Dice; sends a 'prototype' up and a global one down."""

    name: ClassVar[str] = "score_weighted"
    message_extras: ClassVar[frozenset[str]] = frozenset({"prototype"})  # the server refuses any other extras

    def client_update(self, model: nn.Module, ctx: ClientContext, num_examples: int,
                      train_metrics: Mapping[str, float]) -> ClientUpdate:
        update = super().client_update(model, ctx, num_examples, train_metrics)
        update.metrics["val_dice"] = ctx.scratch["val"]["dice"]
        update.extras["prototype"] = torch.full((2, 3), float(len(ctx.client_id)))
        ctx.state["seen_global_proto"] = ctx.broadcast.extras.get("global_proto", torch.zeros(2, 3)).clone()
        return update

    def local_train(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        metrics = super().local_train(model, ctx, trainer)
        ctx.scratch["val"] = trainer.evaluate(model)
        return metrics

    def broadcast(self, rnd: int, global_params: Params, server_state: ServerState) -> Broadcast:
        bc = super().broadcast(rnd, global_params, server_state)
        if "global_proto" in server_state:
            bc.extras["global_proto"] = server_state["global_proto"]
        return bc

    def aggregation_weights(self, updates: Sequence[ClientUpdate], global_params: Params,
                            server_state: ServerState) -> Weighting:
        return Weighting([float(u.metrics["val_dice"]) + 1e-6 for u in updates])

    def aggregate(self, rnd: int, updates: Sequence[ClientUpdate], global_params: Params,
                  server_state: ServerState) -> Aggregate:
        server_state["global_proto"] = torch.stack([u.extras["prototype"] for u in updates]).mean(0)
        server_state["rounds_seen"] = server_state.get("rounds_seen", 0) + 1
        return super().aggregate(rnd, updates, global_params, server_state)


@dataclass
class FineTuneNorms(Algorithm):
    """FedBN-like; after the last round each client fine-tunes its norm layers for one epoch."""

    name: ClassVar[str] = "finetune_norms"

    def local_keys(self, model: nn.Module) -> set[str]:
        return norm_layer_keys(model)

    def personalize(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float]:
        norm_params = self.local_keys(model) & {n for n, _ in model.named_parameters()}
        metrics = trainer.fit(model, epochs=1, trainable=norm_params)
        return {"finetune_loss": metrics["loss"], "phase_round": float(ctx.round)}


def _run_with(alg: Algorithm, tmp_path: Path, rounds: int = 2, **extra: object):  # type: ignore[no-untyped-def]
    import fedseg.runtime.sim as sim

    original = sim.build_algorithm
    sim.build_algorithm = lambda spec: alg  # type: ignore[assignment]
    try:
        return run_inprocess(config_from_dict(tiny_config(rounds=rounds, **extra)), tmp_path, write_report=False)
    finally:
        sim.build_algorithm = original


def test_val_scores_extras_and_server_state_travel(tmp_path: Path) -> None:
    result = _run_with(ScoreWeighted(), tmp_path / "s")
    ckpt = torch.load(tmp_path / "s" / "checkpoints" / "last.pt", weights_only=False)
    weights = [r for r in read_metrics(tmp_path / "s" / "metrics.jsonl") if r["kind"] == "weights" and r["round"] == 2]
    assert {r["site"] for r in weights} == {"site0", "site1"} and all(0 < r["weight"] <= 1 for r in weights)
    assert ckpt["server_state"]["rounds_seen"] == 2
    torch.testing.assert_close(ckpt["server_state"]["global_proto"], torch.full((2, 3), 5.0))
    # round 2's clients received round 1's global prototype
    for site in ("site0", "site1"):
        torch.testing.assert_close(ckpt["client_states"]["memory"][site]["seen_global_proto"], torch.full((2, 3), 5.0))
    assert result.global_params


def test_post_federation_phase_runs_once_per_client_and_is_checkpointed(tmp_path: Path) -> None:
    run_dir = tmp_path / "f"
    _run_with(FineTuneNorms(), run_dir)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "personalize"]
    assert sorted(r["site"] for r in records) == ["site0", "site1"]
    assert all(r["phase_round"] == 3.0 for r in records)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["phase"] == "personalized"
    # resuming a finished, personalised run does not fine-tune again
    import fedseg.runtime.sim as sim

    original = sim.build_algorithm
    sim.build_algorithm = lambda spec: FineTuneNorms()  # type: ignore[assignment]
    try:
        run_inprocess(config_from_dict(tiny_config(rounds=2)), run_dir, resume=True, write_report=False)
    finally:
        sim.build_algorithm = original
    again = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "personalize"]
    assert len(again) == 2


def test_base_algorithm_has_no_post_federation_phase(tmp_path: Path) -> None:
    _run_with(Algorithm(), tmp_path / "a", rounds=1)
    assert not [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r["kind"] == "personalize"]
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["phase"] == "federated"


def test_trainer_evaluate_refuses_unknown_split(tmp_path: Path) -> None:
    @dataclass
    class AsksForTest(Algorithm):
        def local_train(self, model, ctx, trainer):  # type: ignore[no-untyped-def]
            return trainer.evaluate(model, "test")

    with pytest.raises(KeyError, match="no 'test' split"):
        _run_with(AsksForTest(), tmp_path / "t", rounds=1)
