"""Codecs applied by the engine, for every algorithm: bytes counted from the real payload, local
keys never sent, integer buffers exact, residuals checkpointed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_config
from fedseg.algorithms import ALGORITHMS, build_algorithm
from fedseg.codecs import PACK_PREFIX, RESIDUAL_KEY, build_wire_codecs
from fedseg.config import CodecConfig, config_from_dict
from fedseg.engine import wire
from fedseg.engine.rundir import read_metrics
from fedseg.models import build_model
from fedseg.runtime.sim import RunResult, run_inprocess
from fedseg.types import ClientUpdate

TOPK_INT8 = {"up": [{"name": "topk", "ratio": 0.1, "min_numel": 0}, {"name": "int8"}]}  # tiny model: sparsify all


def _run(tmp_path: Path, name: str, cfg: dict[str, Any]) -> RunResult:
    return run_inprocess(config_from_dict(cfg), tmp_path / name, write_report=False)


def test_reported_bytes_equal_the_serialized_payload(tmp_path: Path, sent_updates: list[ClientUpdate]) -> None:
    _run(tmp_path, "c", tiny_config("fedavg", rounds=2, codec=TOPK_INT8))
    train = [r for r in read_metrics(tmp_path / "c" / "metrics.jsonl") if r["kind"] == "train"]
    sent = list(sent_updates)  # (re-encoding below goes through the spy again)
    assert len(sent) == len(train) == 4
    for message, record in zip(sent, train, strict=True):
        assert record["bytes_up"] == len(wire.encode(message))
        assert all(k.startswith(PACK_PREFIX) for k in message.params)  # the compressed tensors travel


def test_topk_int8_sends_far_fewer_bytes_than_float32(tmp_path: Path) -> None:
    _run(tmp_path, "plain", tiny_config("fedavg", rounds=1))
    _run(tmp_path, "tk", tiny_config("fedavg", rounds=1, codec={"up": [{"name": "topk", "ratio": 0.01, "min_numel": 0},
                                                                       {"name": "int8"}]}))
    up = {n: sum(r["bytes_up"] for r in read_metrics(tmp_path / n / "metrics.jsonl") if r["kind"] == "train")
          for n in ("plain", "tk")}
    assert up["plain"] > 5 * up["tk"]  # a tiny model: the message header is a large share here


def test_local_keys_never_travel(tmp_path: Path, sent_updates: list[ClientUpdate]) -> None:
    cfg = tiny_config("fedbn", rounds=1, codec=TOPK_INT8)
    _run(tmp_path, "bn", cfg)
    run_cfg = config_from_dict(cfg)
    model = build_model(run_cfg.model, 2, 1, 2)
    local = build_algorithm({"name": "fedbn"}).local_keys(model)
    reference = model.state_dict()
    codecs = build_wire_codecs(run_cfg.codec)
    assert local and len(sent_updates) == 2
    for message in list(sent_updates):
        assert set(codecs.up.decode(message.params, reference)) == set(reference) - local


def test_integer_buffers_pass_exactly(tmp_path: Path) -> None:
    coded = _run(tmp_path, "coded", tiny_config("fedavg", rounds=2, codec=TOPK_INT8))
    plain = _run(tmp_path, "plain", tiny_config("fedavg", rounds=2))
    counters = [k for k, v in plain.global_params.items() if not v.is_floating_point()]
    assert counters  # num_batches_tracked of the batch-norm layers
    for key in counters:
        assert torch.equal(coded.global_params[key], plain.global_params[key]), key


@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_every_algorithm_runs_with_codecs_both_ways(tmp_path: Path, algorithm: str) -> None:
    codec = {**TOPK_INT8, "down": [{"name": "fp16"}]}
    result = _run(tmp_path, algorithm, tiny_config(algorithm, rounds=2, sites=2, codec=codec))
    test = [r for r in read_metrics(tmp_path / algorithm / "metrics.jsonl") if r.get("kind") == "eval" and r.get("split") == "test"]
    assert {r["site"] for r in test} == {"site0", "site1"}
    assert all(torch.isfinite(v).all() for v in result.global_params.values() if v.is_floating_point())


def test_sixteen_bit_codec_stays_close_to_float32(tmp_path: Path) -> None:
    plain = _run(tmp_path, "plain", tiny_config("fedavg", rounds=1))
    coded = _run(tmp_path, "int16", tiny_config("fedavg", rounds=1, codec={"up": [{"name": "int16"}]}))
    for key, value in plain.global_params.items():
        if value.is_floating_point():
            torch.testing.assert_close(coded.global_params[key], value, rtol=0, atol=1e-3)


def test_down_codec_halves_the_broadcast(tmp_path: Path) -> None:
    _run(tmp_path, "plain", tiny_config("fedavg", rounds=1))
    _run(tmp_path, "fp16", tiny_config("fedavg", rounds=1, codec={"down": [{"name": "fp16"}]}))
    down = {n: [r["bytes_down"] for r in read_metrics(tmp_path / n / "metrics.jsonl") if r["kind"] == "train"][0]
            for n in ("plain", "fp16")}
    assert down["fp16"] < 0.6 * down["plain"]


def test_resume_with_error_feedback_matches_uninterrupted(tmp_path: Path) -> None:
    cfg = tiny_config("fedavg", rounds=3, codec=TOPK_INT8)
    full = _run(tmp_path, "full", cfg)
    run_dir = tmp_path / "part"
    run_inprocess(config_from_dict({**cfg, "federation": {**cfg["federation"], "rounds": 2}}), run_dir,
                  write_report=False)
    (run_dir / "config.yaml").unlink()  # the 2-round config differs only in rounds
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["client_states"]
    assert RESIDUAL_KEY in str(state)  # the residuals are checkpointed with the client states
    resumed = run_inprocess(config_from_dict(cfg), run_dir, resume=True, write_report=False)
    for key, value in full.global_params.items():
        assert torch.equal(value, resumed.global_params[key]), key


def test_bad_codec_config_fails_before_training(tmp_path: Path) -> None:
    from fedseg.codecs import CodecError

    with pytest.raises(CodecError, match=r"codec.up\[0\].name"):
        _run(tmp_path, "bad", tiny_config("fedavg", rounds=1, codec={"up": [{"name": "top-k"}]}))
    assert CodecConfig().up == [] and CodecConfig().error_feedback
