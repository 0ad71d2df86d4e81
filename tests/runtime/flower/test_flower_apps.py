"""The fedseg ServerApp and ClientApp wired through an in-memory Grid (no Ray, no network): the
same FederationServer and ClientRuntime as in-process, so results must match bit for bit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_config
from fake_datasets import write_png_case
from flower_testlib import DirectGrid, write_folder_sites
from fedseg.algorithms import build_algorithm
from fedseg.config import config_from_dict
from fedseg.data.build import build_federated_data
from fedseg.engine.rundir import RunDir, read_metrics
from fedseg.models import build_model
from fedseg.runtime.common import RunError, config_text, site_split_digests
from fedseg.runtime.flower.client_app import clear_cache, make_client_app
from fedseg.runtime.flower.executor import RECEIVED_KEYS_FILE, FlowerRunError
from fedseg.runtime.flower.keys import Record, RunKey
from fedseg.runtime.flower.records import update_from_content
from fedseg.runtime.flower.server_app import ServerResult, run_server
from fedseg.runtime.flower.simulation import run_flower_simulation
from fedseg.runtime.inference import EvalError, evaluate_run
from fedseg.runtime.sim import run_inprocess

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("flower_process")]  # whole federations, no network


def _run_flower(tmp_path: Path, cfg_dict: dict[str, Any], *, nodes: int | None = None,
                expected_nodes: int | None = None, name: str = "flower", states: bool = False,
                resume: bool = False) -> tuple[ServerResult, DirectGrid]:
    """A federation through the ServerApp and ClientApps; ``states``: as ``--engine flower-sim`` does,
    the ClientApps write their states to the run's client_states/ (RunKey.STATE_DIR)."""
    cfg = config_from_dict(cfg_dict)
    run_dir = tmp_path / name
    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(run_dir)}
    state_dir = RunDir(run_dir).client_states if states else None
    app_defaults = {**run_config, RunKey.STATE_DIR.value: str(state_dir)} if state_dir else run_config
    count = nodes if nodes is not None else cfg.data.synthetic.num_sites
    grid = DirectGrid(make_client_app(app_defaults), [{"partition-id": i} for i in range(count)])
    result = run_server(grid, run_config, engine="flower-sim", expected_nodes=expected_nodes, write_report=False,
                        resume=resume, state_dir=state_dir)
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
                if r.get("kind") == "eval" and r.get("model") == "personal" and r.get("split") == "test"]
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
    with pytest.raises(FlowerRunError, match="SuperNode 100: ClientSetupError: node config partition-id=5, but the "
                                             "data has 2 sites"):
        run_server(grid, run_config, engine="flower-sim", expected_nodes=1, write_report=False)


def test_update_codecs_pass_through_flower_unchanged(tmp_path: Path) -> None:
    """Codecs run inside ClientRuntime/FederationServer; Flower carries their packed tensors."""
    cfg = tiny_config("fedbn", rounds=2, sites=2,
                      codec={"up": [{"name": "topk", "ratio": 0.1}, {"name": "int8"}], "down": [{"name": "int8"}]})
    inproc = run_inprocess(config_from_dict(cfg), tmp_path / "inproc", write_report=False)
    flower, _ = _run_flower(tmp_path, cfg, expected_nodes=2)
    for key, value in inproc.global_params.items():
        assert torch.equal(value, flower.global_params[key]), key
    assert _records(tmp_path / "inproc", "train", "round") == _records(tmp_path / "flower", "train", "round")


def _corrupt_folder(root: Path) -> dict[str, str]:
    """Sites A (clean) and B (a mask with a label outside the map, a truncated image): {file: problem}."""
    write_folder_sites(root, ["A", "B"])
    write_png_case(root / "B", "seven", size=(16, 16), label=7)
    truncated = root / "B" / "images" / "case03.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    return {str(root / "B" / "masks" / "seven.png"): "mask values 7", str(truncated): "case03.png"}


def test_a_site_whose_data_check_fails_is_named_with_its_files_before_training(tmp_path: Path) -> None:
    """Deployment: each SuperNode checks its own site's data when the run starts; the server run
    fails with the site, the files and their problems, before any training message."""
    root = tmp_path / "data"
    problems = _corrupt_folder(root)
    cfg = config_from_dict({**tiny_config("fedavg"), "data": {"source": "folder", "root": "/nowhere",
                                                              "sites": ["A", "B"], "image_size": [16, 16]}})
    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(tmp_path / "run")}
    nodes = [{"site": site, "data-root": str(root)} for site in ("A", "B")]
    grid = DirectGrid(make_client_app(), nodes)  # as deployed: the run config comes with the run
    for context in grid.contexts.values():
        context.run_config = dict(run_config)
    with pytest.raises(FlowerRunError) as caught:
        run_server(grid, run_config, engine="flower", write_report=False)
    message = str(caught.value)
    assert "1 SuperNode(s) could not start their site" in message and f"site 'B' (data-root {root})" in message
    assert "site 'A'" not in message
    for path, problem in problems.items():
        assert path in message and problem in message, (path, message)
    assert not any(m.metadata.message_type == "train" for m in grid.sent)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_deployed_sites_report_split_digests_and_personal_models_stay_on_them(tmp_path: Path) -> None:
    cfg = tiny_config("fedbn", rounds=1, sites=2)
    _run_flower(tmp_path, cfg, expected_nodes=2)
    run_dir = tmp_path / "flower"
    info = json.loads((run_dir / "run_info.json").read_text())
    data = build_federated_data(config_from_dict(cfg).data, 0)
    for site in data.sites:
        assert info["flower"][site.name]["split_sha256"] == site_split_digests(site)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["client_states"] is None
    (run_dir / "run_info.json").write_text(json.dumps({**info, "engine": "flower"}))
    with pytest.raises(EvalError, match="live on the SuperNodes.*omit --client.*model: personal"):
        evaluate_run(run_dir, client="site0")
    with pytest.raises(EvalError, match="live on the SuperNodes"):  # FedBN is judged by its personal models
        evaluate_run(run_dir)
    with pytest.raises(RunError, match="holds no client states"):  # refused before Ray starts
        run_flower_simulation(config_from_dict(cfg), run_dir, resume=True)


def test_simulated_client_states_make_resume_exact_and_eval_client_work(tmp_path: Path) -> None:
    """flower-sim: ClientApps keep their states in the run directory, so a run stopped after round 2
    resumes in fresh ClientApps (empty contexts, empty caches) and ends exactly where an uninterrupted
    run ends -- personal FedBN layers and persisted optimizer state included."""
    cfg = tiny_config("fedbn", rounds=3, sites=2, train={"optimizer_state": "persist"})
    full, _ = _run_flower(tmp_path, cfg, expected_nodes=2, name="full", states=True)
    clear_cache()
    two = {**cfg, "federation": {**cfg["federation"], "rounds": 2}}
    _run_flower(tmp_path, two, expected_nodes=2, name="part", states=True)
    part = tmp_path / "part"
    assert sorted(p.name for p in (part / "client_states").iterdir()) == ["site0.r2.pt", "site1.r2.pt"]
    (part / "config.yaml").unlink()  # the 2-round config differs only in rounds
    clear_cache()
    resumed, _ = _run_flower(tmp_path, cfg, expected_nodes=2, name="part", states=True, resume=True)
    for key, value in full.global_params.items():
        assert torch.equal(value, resumed.global_params[key]), key
    assert _records(tmp_path / "full", "train", "eval") == _records(part, "train", "eval")
    assert sorted(p.name for p in (part / "client_states").iterdir()) == ["site0.r3.pt", "site1.r3.pt"]

    # fedseg eval --client: the selected personal model of the checkpoint is the one tested at the end
    final = {r["site"]: r["dice"] for r in read_metrics(part / "metrics.jsonl")
             if r.get("kind") == "eval" and r.get("split") == "test" and r["model"] == "personal"
             and r["selection"] == "best_val"}
    for site in ("site0", "site1"):
        row, = [r for r in evaluate_run(part, client=site) if r["site"] == site]
        assert row["dice"] == pytest.approx(final[site], abs=1e-6), site


def test_error_replies_read_as_the_exception_not_flowers_wrapping() -> None:
    from fedseg.runtime.flower.executor import _reason

    exc = ValueError("site 'B': 1 problem(s):\n  - /data/B/masks/x.png: mask values 7")
    assert _reason(str(type(exc)) + ":<'" + str(exc) + "'>") == f"ValueError: {exc}"  # as Flower formats it
    assert _reason("plain text") == "plain text" and _reason(None) == "(no reason given)"
