"""Update validation before aggregation: each kind of broken or hostile update is rejected with a
reason naming its client, and the others aggregate exactly as if it had never been sent."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from conftest import tiny_config
from fedseg.algorithms import ALGORITHMS
from fedseg.algorithms.base import Algorithm
from fedseg.algorithms.params import weighted_average
from fedseg.config import config_from_dict
from fedseg.engine import wire
from fedseg.engine.rundir import read_metrics
from fedseg.engine.screening import screen_updates, sends_split_size, update_norm
from fedseg.records import Field, Kind, Phase, SummaryKey
from fedseg.runtime.sim import run_inprocess
from fedseg.types import ClientUpdate, Params

GLOBAL: Params = {"w": torch.zeros(2, 3), "b": torch.zeros(3), "steps": torch.tensor(0)}


def _update(client: str, scale: float = 1.0, n: Any = 10, **changes: Any) -> ClientUpdate:
    params = {"w": torch.full((2, 3), scale), "b": torch.full((3,), scale), "steps": torch.tensor(1)}
    return dataclasses.replace(ClientUpdate(client, params, n), **changes)


def _screen(updates: list[ClientUpdate], algorithm: Algorithm | None = None, **kw: Any) -> tuple[list[str], list[str]]:
    out = screen_updates(updates, GLOBAL, algorithm or Algorithm(), **kw)
    return [u.client_id for u in out.accepted], [r.reason for r in out.rejected]


@dataclass
class SendsKept(Algorithm):
    """Sends the samples it kept (FedMix-like), not its split size."""

    name: ClassVar[str] = "sends_kept"

    def client_update(self, model: Any, ctx: Any, num_examples: int, train_metrics: Any) -> ClientUpdate:
        return super().client_update(model, ctx, num_examples // 2, train_metrics)


@pytest.mark.parametrize(("bad", "reason"), [
    (_update("c", params={"w": torch.full((2, 3), float("nan")), "b": torch.zeros(3), "steps": torch.tensor(1)}),
     "c: parameter w holds NaN or inf"),
    (_update("c", extras={"proto": torch.tensor([1.0, float("inf")])}), "c: extra proto holds NaN or inf"),
    (_update("c", params={"w": torch.zeros(3, 2), "b": torch.zeros(3), "steps": torch.tensor(1)}),
     "c: parameter w has shape (3, 2); the global model's is (2, 3)"),
    (_update("c", params={"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(3), "steps": torch.tensor(1)}),
     "c: parameter w has dtype torch.float64; the global model's is torch.float32"),
    (_update("c", params={"w": torch.zeros(2, 3), "b": torch.zeros(3), "steps": torch.tensor(1), "x": torch.ones(1)}),
     "c: unknown parameter(s) x: not among the keys the algorithm shares"),
    (_update("c", params={"w": torch.zeros(2, 3), "steps": torch.tensor(1)}), "c: missing shared parameter(s) b"),
    (_update("c", n=0), "c: num_examples 0 is not positive"),
    (_update("c", n=-5), "c: num_examples -5 is not positive"),
    (_update("c", n=True), "c: num_examples is a bool, not an int"),
    (_update("c", n=10.0), "c: num_examples is a float, not an int"),
    (_update("c", n=10**12), "c: num_examples 1000000000000 is not the training-split size 10 the site declared"),
    (_update("c", n=9), "c: num_examples 9 is not the training-split size 10 the site declared"),
    (_update("c", metrics={"loss": float("nan")}), "c: metric loss is nan"),
    (_update("c", metrics={"val_dice": float("inf")}), "c: metric val_dice is inf"),
])
def test_each_broken_update_is_rejected_with_a_reason_naming_the_client(bad: ClientUpdate, reason: str) -> None:
    accepted, rejected = _screen([_update("a"), bad, _update("b")], shared_keys={"w", "b", "steps"},
                                 declared_sizes={"a": 10, "b": 10, "c": 10}, max_norm_ratio=None)
    assert (accepted, rejected) == (["a", "b"], [reason])


def test_what_is_allowed_passes() -> None:
    """A NaN validation score is "undefined" (an empty mask), not a broken update; without a declared
    size or known shared keys only what can be judged is judged."""
    ok = [_update("a", metrics={"val_dice": float("nan"), "loss": 0.5}), _update("b", n=7),
          _update("c", params={"w": torch.zeros(2, 3)})]
    assert _screen(ok, max_norm_ratio=None) == (["a", "b", "c"], [])


def test_a_method_that_sends_the_samples_it_trained_on_is_held_to_at_most_its_split() -> None:
    assert sends_split_size(Algorithm()) and not sends_split_size(SendsKept())
    assert not sends_split_size(ALGORITHMS.get("fedmix")())
    updates = [_update("a", n=0), _update("b", n=10), _update("c", n=11), _update("d", n=-1)]
    assert _screen(updates, SendsKept(), declared_sizes=dict.fromkeys("abcd", 10), max_norm_ratio=None) == (
        ["a", "b"], ["c: num_examples 11 exceeds the training-split size 10 the site declared",
                     "d: num_examples -1 is not >= 0"])


def test_the_norm_check_needs_three_updates_and_compares_with_the_median() -> None:
    norm = math.sqrt(9)  # 9 float entries at 1.0 (the integer buffer is not counted)
    assert update_norm(_update("a").params, GLOBAL) == pytest.approx(norm)
    updates = [_update("a", 1.0), _update("b", 2.0), _update("c", 1000.0)]
    assert _screen(updates, max_norm_ratio=10.0) == (
        ["a", "b"], [f"c: update norm {1000 * norm:.4g} exceeds federation.max_norm_ratio 10 x the round's median "
                     f"{2 * norm:.4g}"])
    assert _screen(updates, max_norm_ratio=600.0)[1] == []  # 1000 <= 600 x 2
    assert _screen(updates, max_norm_ratio=None)[1] == []
    assert _screen(updates[1:], max_norm_ratio=10.0)[1] == []  # two updates: no median to speak of
    # clients that skipped the round (unchanged model, norm 0) set no scale: 2 moved, no check
    assert _screen([_update("a", 0.0), _update("b", 0.0), _update("c", 1.0), _update("d", 1000.0)],
                   max_norm_ratio=10.0)[1] == []


# ---------------------------------------------------------------- in-process: the others aggregate

Corrupt = Callable[[ClientUpdate], ClientUpdate]


def _first_float(update: ClientUpdate) -> str:
    return next(k for k, v in update.params.items() if v.is_floating_point() and v.ndim > 1)


CORRUPTIONS: dict[str, tuple[Corrupt, str]] = {
    "nan": (lambda u: dataclasses.replace(u, params={**u.params, _first_float(u): u.params[_first_float(u)] * math.nan}),
            "site1: parameter model.0.conv.weight holds NaN or inf"),
    "shape": (lambda u: dataclasses.replace(u, params={**u.params, _first_float(u): u.params[_first_float(u)][:1]}),
              "site1: parameter model.0.conv.weight has shape (1, 1, 3, 3); the global model's is (4, 1, 3, 3)"),
    "unknown_key": (lambda u: dataclasses.replace(u, params={**u.params, "stolen.image": torch.zeros(16, 16)}),
                    "site1: unknown parameter(s) stolen.image: not among the keys the algorithm shares"),
    "norm_x1000": (lambda u: dataclasses.replace(u, params={k: v * 1000 if v.is_floating_point() else v
                                                            for k, v in u.params.items()}),
                   "site1: update norm"),
    "num_examples": (lambda u: dataclasses.replace(u, num_examples=10**12),
                     "site1: num_examples 1000000000000 is not the training-split size {n} the site declared"),
}


@pytest.mark.parametrize("attack", sorted(CORRUPTIONS))
def test_a_bad_update_is_rejected_and_the_global_model_is_the_fedavg_of_the_others(
        attack: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corrupt, reason = CORRUPTIONS[attack]
    sent: dict[str, ClientUpdate] = {}
    original = wire.encode

    def hostile(message: Any) -> bytes:
        if isinstance(message, ClientUpdate):
            sent[message.client_id] = message
            if message.client_id == "site1":
                message = corrupt(message)
        return original(message)

    monkeypatch.setattr(wire, "encode", hostile)
    cfg = config_from_dict(tiny_config(rounds=1, sites=3, eval={"every": 1}))
    result = run_inprocess(cfg, tmp_path / "r", write_report=False)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    rejected = [r for r in records if r[Field.KIND] == Kind.REJECTED]
    assert [(r[Field.ROUND], r[Field.SITE], r[Field.PHASE]) for r in rejected] == [(1, "site1", Phase.FIT)]
    assert rejected[0][Field.REASON].startswith(reason.format(n=sent["site1"].num_examples))
    assert [r[Field.REJECTIONS] for r in records if r[Field.KIND] == Kind.ROUND] == [1]
    honest = [sent["site0"], sent["site2"]]
    expected = weighted_average([u.params for u in honest], [float(u.num_examples) for u in honest])
    assert expected.keys() == result.global_params.keys()
    assert all(torch.equal(result.global_params[k], expected[k]) for k in expected)
    assert result.summary[SummaryKey.FAILURES] == {"site1": {"failure": 0, "rejected": 1}}
