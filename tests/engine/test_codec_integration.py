"""Codecs applied by the engine, for every algorithm: bytes counted from the real payload, local
keys never sent, integer buffers exact, residuals checkpointed."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from conftest import tiny_config
from fedseg.algorithms import ALGORITHMS, build_algorithm
from fedseg.algorithms.base import Algorithm, ClientContext, LocalTrainer
from fedseg.codecs import PACK_PREFIX, RESIDUAL_KEY, UpdateCodec, build_wire_codecs
from fedseg.config import CodecConfig, config_from_dict
from fedseg.engine import wire
from fedseg.engine.rundir import RunDir, read_metrics
from fedseg.engine.traffic import bytes_totals
from fedseg.models import build_model
from fedseg.records import BytesKey, Field, Kind, Phase, SummaryKey
from fedseg.runtime.sim import InProcessExecutor, RunResult, run_inprocess
from fedseg.types import ClientState, ClientUpdate, Params

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
    from fedseg.config import ConfigError

    with pytest.raises(ConfigError, match=r"codec.up\[0\].name"):  # before any directory or data
        _run(tmp_path, "bad", tiny_config("fedavg", rounds=1, codec={"up": [{"name": "top-k"}]}))
    assert not (tmp_path / "bad").exists()
    assert CodecConfig().up == [] and CodecConfig().error_feedback


# ---------------------------------------------------------------- every byte counted, both directions
@dataclass
class _Personalizing(Algorithm):
    """FedAvg with a (trivial) post-federation phase, so the personalize exchange is counted too."""

    name: ClassVar[str] = "toy_personalizing"

    def personalize(self, model: nn.Module, ctx: ClientContext, trainer: LocalTrainer) -> dict[str, float] | None:
        return {"tuned": 1.0}


@dataclass
class _Exchange:
    phase: str  # fit | evaluate | personalize
    rnd: int
    clients: list[str]
    payload: bytes
    replies: dict[str, bytes]


@pytest.fixture
def exchanges(monkeypatch: pytest.MonkeyPatch) -> list[_Exchange]:
    """Every message the in-process transport carries, both directions, as the bytes it carries."""
    seen: list[_Exchange] = []
    fit, evaluate, personalize = InProcessExecutor.fit, InProcessExecutor.evaluate, InProcessExecutor.personalize

    def spy_fit(self: InProcessExecutor, rnd: int, clients: list[str], payload: bytes) -> Any:
        out = fit(self, rnd, clients, payload)
        seen.append(_Exchange("fit", rnd, list(clients), payload, {c: data for c, (data, _) in out.items()}))
        return out

    def spy_evaluate(self: InProcessExecutor, rnd: int, clients: list[str], payload: bytes, split: str) -> Any:
        out = evaluate(self, rnd, clients, payload, split)
        seen.append(_Exchange("evaluate", rnd, list(clients), payload, dict(out)))
        return out

    def spy_personalize(self: InProcessExecutor, rnd: int, clients: list[str], payload: bytes) -> Any:
        out = personalize(self, rnd, clients, payload)
        seen.append(_Exchange("personalize", rnd, list(clients), payload, dict(out)))
        return out

    monkeypatch.setattr(InProcessExecutor, "fit", spy_fit)
    monkeypatch.setattr(InProcessExecutor, "evaluate", spy_evaluate)
    monkeypatch.setattr(InProcessExecutor, "personalize", spy_personalize)
    monkeypatch.setitem(ALGORITHMS._items, _Personalizing.name, _Personalizing)
    return seen


@pytest.fixture
def uncoded_updates(monkeypatch: pytest.MonkeyPatch) -> list[Params]:
    """The parameters every client hands to the up codec (its update before any coding)."""
    seen: list[Params] = []
    encode = UpdateCodec.encode

    def spy(self: UpdateCodec, params: Params, reference: Params, state: ClientState) -> Params:
        seen.append(dict(params))
        return encode(self, params, reference, state)

    monkeypatch.setattr(UpdateCodec, "encode", spy)
    return seen


BOTH_WAYS = {**TOPK_INT8, "down": [{"name": "int8"}]}


def test_every_message_is_counted_as_its_serialized_length_both_ways(
    tmp_path: Path, exchanges: list[_Exchange], uncoded_updates: list[Params]
) -> None:
    cfg = tiny_config(_Personalizing.name, rounds=2, codec=BOTH_WAYS)
    result = _run(tmp_path, "c", cfg)
    records = read_metrics(tmp_path / "c" / "metrics.jsonl")
    plain = _run(tmp_path, "p", tiny_config(_Personalizing.name, rounds=2))  # the same exchanges without codecs
    plain_records = read_metrics(tmp_path / "p" / "metrics.jsonl")
    coded = exchanges[: len(exchanges) // 2]
    # rounds 1-2: fit + val evaluation; then personalize and the final test evaluations (the
    # best-validation checkpoint, then the last round's model)
    assert [(e.phase, e.rnd) for e in coded] == [("fit", 1), ("evaluate", 1), ("fit", 2), ("evaluate", 2),
                                                 ("personalize", 3), ("evaluate", 2), ("evaluate", 2)]

    train = [r for r in records if r["kind"] == Kind.TRAIN]
    fits = [e for e in coded if e.phase == "fit"]
    assert len(train) == 4 and len(uncoded_updates) == 4
    for record, raw_params in zip(train, uncoded_updates, strict=True):
        e = next(e for e in fits if e.rnd == record["round"])
        data = e.replies[record["site"]]
        assert record[Field.BYTES_UP] == len(data) and record[Field.BYTES_DOWN] == len(e.payload)
        update = wire.decode(data)
        assert isinstance(update, ClientUpdate)
        assert record[Field.BYTES_UP_RAW] == len(wire.encode(replace(update, params=raw_params)))
    for e, rnd in zip(fits, (1, 2), strict=True):
        (line,) = [r for r in records if r["kind"] == Kind.ROUND and r["round"] == rnd]
        assert line[Field.BYTES_UP] == sum(len(d) for d in e.replies.values())
        assert line[Field.BYTES_DOWN] == len(e.payload) * len(e.clients)
        assert line[Field.BYTES_UP_RAW] == sum(r[Field.BYTES_UP_RAW] for r in train if r["round"] == rnd)

    comm = [r for r in records if r["kind"] == Kind.COMM]
    others = [e for e in coded if e.phase != "fit"]
    assert [(r[Field.PHASE], r.get(Field.SPLIT)) for r in comm] == [
        (Phase.EVAL, "val"), (Phase.EVAL, "val"), (Phase.PERSONALIZE, None), (Phase.EVAL, "test"), (Phase.EVAL, "test")]
    for line, e in zip(comm, others, strict=True):
        assert line[Field.CLIENTS] == len(e.clients) == 2
        assert line[Field.BYTES_DOWN] == len(e.payload) * 2
        assert line[Field.BYTES_UP] == line[Field.BYTES_UP_RAW] == sum(len(d) for d in e.replies.values())
        assert all(wire.decode_records(d) for d in e.replies.values())  # real records crossed
    # raw = the same broadcasts without any codec: exactly the sizes the uncoded run sends down
    def exchange_lines(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rs if r["kind"] in (Kind.ROUND, Kind.COMM)]

    assert [r[Field.BYTES_DOWN_RAW] for r in exchange_lines(records)] == \
        [r[Field.BYTES_DOWN] for r in exchange_lines(plain_records)]
    # summary.json: totals over every round and comm line = every byte the transport carried
    carried_up = sum(len(d) for e in coded for d in e.replies.values())
    carried_down = sum(len(e.payload) * len(e.clients) for e in coded)
    assert result.summary[SummaryKey.BYTES] == bytes_totals(records)
    assert result.summary[SummaryKey.BYTES][BytesKey.UP] == carried_up
    assert result.summary[SummaryKey.BYTES][BytesKey.DOWN] == carried_down
    assert result.summary[SummaryKey.BYTES][BytesKey.TOTAL] == carried_up + carried_down
    totals = plain.summary[SummaryKey.BYTES]
    assert totals[BytesKey.UP] == totals[BytesKey.UP_RAW] and totals[BytesKey.DOWN] == totals[BytesKey.DOWN_RAW]
    assert result.summary[SummaryKey.BYTES][BytesKey.DOWN_RAW] == totals[BytesKey.DOWN]
    assert result.summary[SummaryKey.BYTES][BytesKey.DOWN] < 0.5 * totals[BytesKey.DOWN]  # int8 down


def test_an_unfinished_personalize_exchange_is_dropped_on_resume(tmp_path: Path, exchanges: list[_Exchange]) -> None:
    """Resume re-does a personalize phase that has no checkpoint: its comm line must go with its records."""
    run_dir = tmp_path / "r"
    cfg = tiny_config(_Personalizing.name, rounds=1)
    _run(tmp_path, "r", cfg)
    records = read_metrics(run_dir / "metrics.jsonl")
    # a run killed after the personalize lines were written but before its checkpoint: resume re-does it
    RunDir(run_dir).truncate_metrics_after(1)
    kept = read_metrics(run_dir / "metrics.jsonl")
    assert not [r for r in kept if r.get(Field.PHASE) == Phase.PERSONALIZE or r["kind"] == Kind.PERSONALIZE]
    assert len([r for r in records if r.get(Field.PHASE) == Phase.PERSONALIZE]) == 1
