"""LG-FedAvg: local representation layers never travel; the head is the global part."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.algorithms.base import StateKey
from fedseg.config import config_from_dict
from fedseg.models import build_model
from fedseg.records import ModelKind, Selection
from fedseg.runtime.sim import run_inprocess
from fedseg.types import ClientUpdate


def _model() -> nn.Module:
    return build_model(config_from_dict(tiny_config()).model, 2, 1, 2)


def test_local_is_everything_but_the_head_by_default() -> None:
    model = _model()
    keys = build_algorithm({"name": "lgfedavg"}).local_keys(model)
    head = {k for k in model.state_dict() if k.startswith("model.2.")}
    assert head and keys == set(model.state_dict()) - head  # FedPer's split reversed
    assert build_algorithm({"name": "lgfedavg"}).judged_by == ModelKind.PERSONAL


def test_which_layers_are_local_is_configurable() -> None:
    model = _model()
    only_first = build_algorithm({"name": "lgfedavg", "local": ["model.0"]}).local_keys(model)
    assert only_first and all(k.startswith("model.0.") for k in only_first)
    shared_top = build_algorithm({"name": "lgfedavg", "head": ["model.1", "model.2"]}).local_keys(model)
    assert shared_top and all(k.startswith("model.0.") for k in shared_top)
    with pytest.raises(ValueError, match="not both"):
        build_algorithm({"name": "lgfedavg", "local": ["model.0"], "head": ["model.2"]})
    with pytest.raises(KeyError, match="not found"):
        build_algorithm({"name": "lgfedavg", "local": ["model.9"]}).local_keys(model)


def test_only_the_head_travels_and_clients_keep_their_representation(tmp_path: Path,
                                                                     sent_updates: list[ClientUpdate]) -> None:
    result = run_inprocess(config_from_dict(tiny_config("lgfedavg", rounds=2)), tmp_path / "lg", write_report=False)
    model = _model()
    head = {k for k in model.state_dict() if k.startswith("model.2.")}
    assert len(sent_updates) == 4 and all(set(u.params) == head for u in sent_updates)
    from fedseg.runtime.trained import open_run

    run = open_run(tmp_path / "lg", "last")
    assert run.states is not None
    a, b = (run.states[s][StateKey.LOCAL_PARAMS] for s in ("site0", "site1"))
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    init = run.init_params
    key = next(k for k in a if k.endswith("weight"))
    assert torch.equal(result.global_params[key], init[key])  # the representation is never aggregated


def test_unseen_model_is_the_sample_weighted_mean_of_the_representations() -> None:
    alg = build_algorithm({"name": "lgfedavg"})
    g = {"rep": torch.zeros(2), "head": torch.ones(2)}
    states = {"A": {StateKey.LOCAL_PARAMS: {"rep": torch.tensor([3.0, 0.0])}},
              "B": {StateKey.LOCAL_PARAMS: {"rep": torch.tensor([0.0, 6.0])}}}
    got = alg.unseen_params(g, states, {"A": 1, "B": 2}, Selection.LAST)
    assert got is not None
    torch.testing.assert_close(got["rep"], torch.tensor([1.0, 4.0]))
    assert torch.equal(got["head"], g["head"])
