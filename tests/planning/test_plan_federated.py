"""Federated planning on a tiny NIfTI dataset: federated = pooled; nothing per case leaves a site;
the Flower round (DirectGrid) gives the in-process plan and sends it back to every site."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedseg.config import config_from_dict
from fedseg.planning.cases import site_fingerprint, training_cases
from fedseg.planning.federated import client_fingerprint, fingerprint_to_json, plan_inprocess
from fedseg.planning.fingerprint import merge
from fedseg.planning.planner import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "flower"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_testlib import CASES, plan_config, write_dataset  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan_data")
    write_dataset(root)
    return root


def test_federated_fingerprint_and_plan_equal_the_pooled_ones(dataset: Path) -> None:
    cfg = config_from_dict(plan_config(dataset))
    cases = training_cases(cfg.data, cfg.seed)
    assert sorted(cases) == ["siteA", "siteB"] and all(len(c) == 2 for c in cases.values())
    sites = [client_fingerprint(cfg, s, cases[s]) for s in cases]
    merged = merge(sites)
    pooled = site_fingerprint(cfg.data, "pooled", [c for s in cases for c in cases[s]])
    a, b = merged.to_dict(), pooled.to_dict()
    assert a.pop("modalities") == {"MR": 2} and b.pop("modalities") == {"MR": 1}
    for key in ("intensity_sum", "intensity_sumsq"):
        np.testing.assert_allclose(a.pop(key), b.pop(key), rtol=1e-12)
    assert a == b  # counts and histograms: exactly
    assert make_plan(merged).decisions == make_plan(pooled).decisions
    # and the target spacing is numpy's median over the training cases' own spacings (nnU-Net's rule)
    geometry = {f"{site}_c{i}": g for site, items in CASES.items() for i, g in enumerate(items)}
    spacings = np.array([geometry[c.case_id][1] for s in cases for c in cases[s]])
    expected = np.median(spacings, axis=0)
    assert plan_inprocess(cfg).plan.overrides["data"]["preprocess"]["target_spacing"] == pytest.approx(expected)


def _lists(node: Any) -> list[list[Any]]:
    if isinstance(node, dict):
        return [x for v in node.values() for x in _lists(v)]
    if isinstance(node, list):
        if node and all(isinstance(p, list) and len(p) == 2 for p in node):
            return [node]  # a histogram: (value, count) pairs
        return [node] + [x for v in node for x in _lists(v)]
    return []


def test_no_message_carries_per_case_values(dataset: Path) -> None:
    cfg = config_from_dict(plan_config(dataset))
    cases = training_cases(cfg.data, cfg.seed)
    for site, files in cases.items():
        text = fingerprint_to_json(client_fingerprint(cfg, site, files))
        assert text == fingerprint_to_json(client_fingerprint(cfg, site, list(reversed(files))))  # no case order
        for f in files:
            assert f.case_id not in text and f.images[0].name not in text  # no case ids or file names
        message = json.loads(text)
        voxels = {int(np.prod(CASES[site][int(f.case_id[-1])][0])) for f in files}
        for item in _lists(message):
            assert len(item) not in voxels  # no image-sized arrays
            if len(item) == len(files) and item and isinstance(item[0], list):
                # a list as long as the site's case list is only ever a histogram: sorted (value, count) pairs
                assert all(len(p) == 2 for p in item) and [p[0] for p in item] == sorted(p[0] for p in item)
            elif len(item) == len(files):
                assert item in (message["intensity_count"], message["intensity_sum"], message["intensity_sumsq"],
                                message["intensity_min"], message["intensity_max"], message["class_voxels"])


def test_the_flower_round_plans_as_in_process_and_sends_the_plan_back(dataset: Path, flower_process: None) -> None:
    from flower_testlib import DirectGrid
    from flwr.clientapp import ClientApp

    from fedseg.runtime.flower.keys import RunKey
    from fedseg.runtime.flower.plan_round import PLAN_RECORD, PlanField, register_plan_queries, request_plan

    raw = plan_config(dataset)
    cfg = config_from_dict(raw)
    app = register_plan_queries(ClientApp(), {RunKey.CONFIG.value: yaml.safe_dump(raw)})
    grid = DirectGrid(app, [{"site": "siteB"}, {"site": "siteA", "data-root": str(dataset)}])
    result = request_plan(grid, cfg)
    assert result.sites == ["siteA", "siteB"]  # sorted (no site list in the config), whatever the node order
    assert result.plan.decisions == plan_inprocess(cfg).plan.decisions
    for context in grid.contexts.values():
        sent = yaml.safe_load(str(context.state[PLAN_RECORD][PlanField.PLANS_YAML.value]))
        assert sent["overrides"] == yaml.safe_load(yaml.safe_dump(result.plan.overrides))
    queries = [m for m in grid.sent if m.metadata.message_type == "query.plan_fingerprint"]
    assert len(queries) == 2 and all(not m.content.config_records for m in queries)  # the server asks, sends nothing


def test_a_failing_site_names_itself(dataset: Path, flower_process: None) -> None:
    from flower_testlib import DirectGrid
    from flwr.clientapp import ClientApp

    from fedseg.planning import PlanError
    from fedseg.runtime.flower.keys import RunKey
    from fedseg.runtime.flower.plan_round import register_plan_queries, request_plan

    raw = plan_config(dataset)
    app = register_plan_queries(ClientApp(), {RunKey.CONFIG.value: yaml.safe_dump(raw)})
    grid = DirectGrid(app, [{"site": "siteZ"}])
    with pytest.raises(PlanError, match="siteZ"):
        request_plan(grid, config_from_dict(raw))
