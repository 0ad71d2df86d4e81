"""Personalised baselines: what stays local never travels, and personal models are used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.algorithms.base import Algorithm, StateKey
from fedseg.config import config_from_dict
from fedseg.engine.client import PrivacyError
from fedseg.models import build_model
from fedseg.records import Selection
from fedseg.runtime.sim import run_inprocess
from fedseg.types import ClientUpdate


def _model() -> nn.Module:
    return build_model(config_from_dict(tiny_config()).model, 2, 1, 2)


@pytest.mark.parametrize("name", ["fedper", "fedrep"])
def test_head_is_the_last_decoder_block_and_never_sent(tmp_path: Path, sent_updates: list[ClientUpdate],
                                                       name: str) -> None:
    alg = build_algorithm({"name": name})
    head = alg.local_keys(_model())
    assert head and all(k.startswith("model.2.") for k in head)
    sent = sent_updates
    run_inprocess(config_from_dict(tiny_config({"name": name, "head_epochs": 1} if name == "fedrep" else name)),
                  tmp_path / name, write_report=False)
    assert sent and all(not head & set(u.params) for u in sent)


def test_explicit_head_names_are_exact_module_names() -> None:
    alg = build_algorithm({"name": "fedper", "head": ["model.0"]})
    assert all(k.startswith("model.0.") for k in alg.local_keys(_model()))
    with pytest.raises(KeyError, match="not found"):
        build_algorithm({"name": "fedper", "head": ["model.9"]}).local_keys(_model())


def test_fedrep_trains_head_then_body(tmp_path: Path) -> None:
    result = run_inprocess(config_from_dict(tiny_config({"name": "fedrep", "head_epochs": 2}, rounds=1)),
                           tmp_path / "r", write_report=False)
    assert result.summary["test"]["personal"].keys() == {"site0", "site1"}


def test_ditto_personal_model_stays_local_and_differs_from_global(tmp_path: Path,
                                                                   sent_updates: list[ClientUpdate]) -> None:
    sent = sent_updates
    run_dir = tmp_path / "d"
    result = run_inprocess(config_from_dict(tiny_config({"name": "ditto", "lam": 0.1}, rounds=2)), run_dir,
                           write_report=False)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    personal = ckpt["client_states"]["memory"]["site0"]["personal_model"]
    assert personal.keys() == result.global_params.keys()
    assert any(not torch.equal(personal[k], result.global_params[k]) for k in personal)
    assert all(set(u.extras) == set() and set(u.params) == set(result.global_params) for u in sent)
    assert all("personal_loss" in u.metrics for u in sent)


def test_engine_refuses_an_update_that_leaks_a_local_key(tmp_path: Path) -> None:
    @dataclass
    class Leaky(Algorithm):
        def local_keys(self, model: nn.Module) -> set[str]:
            return {next(iter(model.state_dict()))}

        def client_update(self, model, ctx, num_examples, train_metrics):  # type: ignore[no-untyped-def]
            return ClientUpdate(ctx.client_id, {k: v.cpu() for k, v in model.state_dict().items()}, num_examples)

    import fedseg.runtime.sim as sim

    original = sim.build_algorithm
    try:
        sim.build_algorithm = lambda spec: Leaky()  # type: ignore[assignment]
        with pytest.raises(PrivacyError, match="local keys"):
            run_inprocess(config_from_dict(tiny_config(rounds=1)), tmp_path / "leak", write_report=False)
    finally:
        sim.build_algorithm = original


# ---------------------------------------------------------------- models for sites that never trained
def _state(local: dict[str, torch.Tensor], best: dict[str, torch.Tensor] | None = None, best_dice: float = 0.5,
           last_dice: float = 0.1) -> dict[str, object]:
    state: dict[str, object] = {StateKey.LOCAL_PARAMS: local, StateKey.LAST_VAL: {"round": 3, "dice": last_dice}}
    if best is not None:
        state[StateKey.BEST_VAL] = {"round": 2, "dice": best_dice, "params": best}
    return state


@pytest.mark.parametrize("name", ["fedbn", "fedper", "fedrep"])
def test_unseen_model_is_the_sample_weighted_mean_of_the_local_parts(name: str) -> None:
    alg = build_algorithm({"name": name})
    g = {"body": torch.tensor([1.0, 1.0]), "norm": torch.tensor([0.0, 0.0]), "steps": torch.tensor(0)}
    a = {"norm": torch.tensor([3.0, 0.0]), "steps": torch.tensor(4)}
    b = {"norm": torch.tensor([0.0, 6.0]), "steps": torch.tensor(9)}
    states = {"A": _state(a), "B": _state(b)}
    got = alg.unseen_params(g, states, {"A": 1, "B": 2}, Selection.LAST)
    assert got is not None
    torch.testing.assert_close(got["norm"], torch.tensor([1.0, 4.0]))  # (a + 2b) / 3
    assert torch.equal(got["body"], g["body"]) and int(got["steps"]) == 9  # integer buffers: the maximum
    # best_val combines each client's selected snapshot, not its last local layers
    states["A"] = _state(a, best={**g, "norm": torch.tensor([6.0, 6.0]), "steps": torch.tensor(1)})
    got = alg.unseen_params(g, states, {"A": 1, "B": 2}, Selection.BEST_VAL)
    assert got is not None
    torch.testing.assert_close(got["norm"], torch.tensor([2.0, 6.0]))
    assert alg.unseen_params(g, {}, {}, Selection.LAST) is None  # a deployment: no client states


def test_local_only_unseen_model_is_the_best_validated_single_site_model() -> None:
    alg = build_algorithm({"name": "local"})
    g = {"w": torch.zeros(1)}
    states = {"A": _state({"w": torch.tensor([1.0])}, best={"w": torch.tensor([10.0])}, best_dice=0.9, last_dice=0.2),
              "B": _state({"w": torch.tensor([2.0])}, best={"w": torch.tensor([20.0])}, best_dice=0.8, last_dice=0.3)}
    assert torch.equal(alg.unseen_params(g, states, {}, Selection.BEST_VAL)["w"], torch.tensor([10.0]))  # type: ignore[index]
    assert torch.equal(alg.unseen_params(g, states, {}, Selection.LAST)["w"], torch.tensor([2.0]))  # type: ignore[index]
    states["B"][StateKey.LAST_VAL] = {"round": 3, "dice": 0.2}  # a tie goes to the first site by name
    assert torch.equal(alg.unseen_params(g, states, {}, Selection.LAST)["w"], torch.tensor([1.0]))  # type: ignore[index]
    assert alg.unseen_params(g, {"A": {}}, {}, Selection.LAST) is None  # never validated: none


@pytest.mark.parametrize("name", ["fedavg", "ditto", "centralized"])
def test_methods_without_local_layers_use_the_global_model_on_unseen_sites(name: str) -> None:
    g = {"w": torch.ones(2)}
    assert build_algorithm({"name": name}).unseen_params(g, {"A": {"personal_model": {"w": torch.zeros(2)}}},
                                                         {"A": 3}) is g
