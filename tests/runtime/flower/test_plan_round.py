"""The planning round on fedseg's own Flower apps (in-memory Grid, no Ray): ``fedseg plan --engine
flower-sim`` writes the in-process plans file byte for byte; the deployed ClientApp answers the
plan queries and the ServerApp plans only when the run config says so; no message carries a case;
a hostile or malformed fingerprint is refused naming its site."""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict
from typer.testing import CliRunner

from flower_testlib import DirectGrid
from fedseg.cli.main import app as cli
from fedseg.config import RunConfig, config_from_dict
from fedseg.planning import PlanError, plan_inprocess
from fedseg.planning.cases import training_cases
from fedseg.planning.federated import client_fingerprint, fingerprint_to_json
from fedseg.planning.fingerprint import Fingerprint
from fedseg.runtime.common import config_text
from fedseg.runtime.flower import client_app, server_app
from fedseg.runtime.flower.keys import RunKey
from fedseg.runtime.flower.plan_round import PLAN_RECORD, PlanAction, PlanField, check_fingerprint, request_plan
from fedseg.runtime.flower.project import app_pyproject

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "planning"))
from plan_testlib import plan_config, write_dataset  # noqa: E402

pytestmark = pytest.mark.usefixtures("flower_process")
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan_round_data")
    write_dataset(root)
    return root


@pytest.fixture(scope="module")
def honest(dataset: Path) -> tuple[RunConfig, dict[str, Fingerprint]]:
    cfg = config_from_dict(plan_config(dataset))
    cases = training_cases(cfg.data, cfg.seed)
    return cfg, {s: client_fingerprint(cfg, s, files) for s, files in cases.items()}


def _context(run_config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_flower_sim_plan_writes_the_in_process_plans_file(dataset: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``fedseg plan --engine flower-sim`` with Flower's simulation replaced by the in-memory Grid
    (same ServerApp, the default ClientApp, partition ids in reverse node order)."""
    from fedseg.runtime.flower import plan_sim

    grids: list[DirectGrid] = []

    def simulate(server_app: Any, client_app: Any, num_supernodes: int, backend_config: Any) -> None:
        grids.append(DirectGrid(client_app, [{"partition-id": i} for i in reversed(range(num_supernodes))]))
        server_app(grids[0], _context({}))

    monkeypatch.setattr(plan_sim, "run_simulation", simulate)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(plan_config(dataset)))
    outs = {}
    for engine in ("inprocess", "flower-sim"):
        outs[engine] = tmp_path / engine / "plans.yaml"
        result = runner.invoke(cli, ["plan", str(cfg), "--engine", engine, "--out", str(outs[engine]), "--no-plots"])
        assert result.exit_code == 0, result.output
    text = outs["inprocess"].read_text()
    assert outs["flower-sim"].read_text() == text  # byte for byte: same merge order, same plan, same source
    assert yaml.safe_load(text)["sites"] == ["siteA", "siteB"]
    for context in grids[0].contexts.values():  # every site keeps the plan it was sent
        assert str(context.state[PLAN_RECORD][PlanField.PLANS_YAML.value]) == text
    refused = runner.invoke(cli, ["plan", str(cfg), "--set", "engine=flower", "--out", str(tmp_path / "x.yaml")])
    assert refused.exit_code == 2 and "--plan-only" in refused.output


def test_the_deployed_apps_plan_only_when_asked(dataset: Path, tmp_path: Path) -> None:
    """The module-level ``client_app.app`` / ``server_app.app`` of a deployment, with the run config
    ``fedseg flower app --plan-only`` writes: plans.yaml + plans.md in run-dir, no training."""
    raw = plan_config(dataset, name="deployed")
    cfg = config_from_dict(raw)
    run_dir = tmp_path / "run"
    run_config = app_pyproject(cfg, run_dir, command="cmd", plan_only=True)["tool"]["flwr"]["app"]["config"]
    assert run_config[RunKey.PLAN_ONLY.value] is True
    assert app_pyproject(cfg, run_dir)["tool"]["flwr"]["app"]["config"][RunKey.PLAN_ONLY.value] is False
    grid = DirectGrid(client_app.app, [{"site": s, "data-root": str(dataset)} for s in ("siteB", "siteA")])
    for context in grid.contexts.values():
        context.run_config = dict(run_config)
    server_app.app(grid, _context(dict(run_config)))
    doc = yaml.safe_load((run_dir / "plans.yaml").read_text())
    assert doc["sites"] == ["siteA", "siteB"] and doc["source"] == "cmd"
    assert doc["overrides"] == yaml.safe_load(yaml.safe_dump(plan_inprocess(cfg).plan.overrides))
    assert (run_dir / "plans.md").is_file() and not (run_dir / "config.yaml").exists()  # planned, did not train
    assert {m.metadata.message_type for m in grid.sent} == {PlanAction.FINGERPRINT.value, PlanAction.RESULT.value}


def test_flower_app_command_writes_planning_and_planned_apps(dataset: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(plan_config(dataset)))

    def app_config(*args: str) -> dict[str, Any]:
        out = tmp_path / "app"
        result = runner.invoke(cli, ["flower", "app", str(out), str(cfg), "--run-dir", "/srv/r", *args])
        assert result.exit_code == 0, result.output
        config: dict[str, Any] = tomllib.loads((out / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
        return config

    assert app_config("--plan-only")[RunKey.PLAN_ONLY.value] is True
    plans = tmp_path / "plans.yaml"
    plans.write_text(yaml.safe_dump({"fedseg_plans": 1, "overrides": {"train": {"patch_size": [16, 16, 8]}}}))
    planned = app_config("--plans", str(plans), "--set", "train.lr=0.5")
    assert planned[RunKey.PLAN_ONLY.value] is False
    trained = client_app.load_run_config(planned)
    assert trained.train.patch_size == [16, 16, 8] and trained.train.lr == 0.5  # plan < config < --set
    both = runner.invoke(cli, ["flower", "app", str(tmp_path / "a"), str(cfg), "--run-dir", "r", "--plan-only",
                               "--plans", str(plans)])
    assert both.exit_code == 2 and "not both" in both.output


class SpyGrid(DirectGrid):
    """Keeps every reply the server pulls."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pulled: list[Message] = []

    def pull_messages(self, message_ids: Any) -> list[Message]:
        replies = list(super().pull_messages(message_ids))
        self.pulled += replies
        return replies


def _texts(message: Message) -> list[str]:
    if message.has_error():
        return [str(message.error.reason)]
    return [f"{k}={v}" for rec in message.content.config_records.values() for k, v in rec.items()]


def test_no_flower_message_carries_per_case_values(dataset: Path,
                                                   honest: tuple[RunConfig, dict[str, Fingerprint]]) -> None:
    """The Flower twin of the in-process spy: every message both ways holds no case id, file name or
    path, and a site's reply is exactly its fingerprint message (which that spy checks)."""
    cfg, fingerprints = honest
    grid = SpyGrid(client_app.make_client_app({RunKey.CONFIG.value: config_text(cfg)}),
                   [{"site": "siteA"}, {"site": "siteB", "data-root": str(dataset)}])
    request_plan(grid, cfg)
    assert len(grid.sent) == 4 and len(grid.pulled) == 4
    secrets = [str(dataset)] + [x for s in training_cases(cfg.data, cfg.seed).values() for c in s
                                for x in (c.case_id, c.images[0].name, c.mask.name if c.mask else c.case_id)]
    for message in grid.sent + grid.pulled:
        for text in _texts(message):
            assert not [s for s in secrets if s in text], text[:200]
    for reply in grid.pulled:
        if reply.content.config_records:
            record = reply.content.config_records[PLAN_RECORD]
            if PlanField.FINGERPRINT.value in record:
                assert set(record) == {PlanField.SITE.value, PlanField.FINGERPRINT.value}
                site = str(record[PlanField.SITE.value])
                assert record[PlanField.FINGERPRINT.value] == fingerprint_to_json(fingerprints[site])


def _tampered(fp: Fingerprint, change: Callable[[dict[str, Any]], None]) -> Fingerprint:
    raw = json.loads(fingerprint_to_json(fp))
    change(raw)
    return Fingerprint.from_dict(raw)


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d.update(channels=2, intensity_bins=d["intensity_bins"] * 2), "channels 2"),
    (lambda d: d.update(num_cases=1000), "spacing_um[0] counts"),  # a site inflating its weight
    (lambda d: d["shape"][1].append([4096, -3]), "shape[1]"),
    (lambda d: d["intensity_bins"][0].append([70000, 1]), "intensity_bins[0]"),
    (lambda d: d.update(intensity_sum=[float("nan")]), "intensity sums"),
    (lambda d: d.update(spacing_um=d["spacing_um"][:2]), "spacing_um has 2 entries"),
    (lambda d: d.update(modalities={"MR": 1, "CT": 1}), "modalities"),
])
def test_check_fingerprint_refuses_what_no_site_could_compute(
        honest: tuple[RunConfig, dict[str, Fingerprint]], change: Callable[[dict[str, Any]], None],
        field: str) -> None:
    cfg, fingerprints = honest
    check_fingerprint(fingerprints["siteA"], cfg, "'siteA'")  # the honest one passes
    with pytest.raises(PlanError, match=r"site 'siteB'.*" + field.replace("[", r"\[").replace("]", r"\]")):
        check_fingerprint(_tampered(fingerprints["siteB"], change), cfg, "'siteB'")


@pytest.mark.parametrize(("tamper", "expected"), [
    (lambda record: record.update({PlanField.FINGERPRINT.value: "{not json"}), "site 'siteB' .*not JSON"),
    (lambda record: record.update({PlanField.FINGERPRINT.value: json.dumps(
        {**json.loads(str(record[PlanField.FINGERPRINT.value])), "num_cases": 99})}), "site 'siteB' .*num_cases is 99"),
    (lambda record: record.pop(PlanField.SITE.value), "node 101: refused fingerprint reply"),
    (lambda record: record.update({PlanField.SITE.value: "siteA"}), "two nodes serve site 'siteA'"),
])
def test_a_hostile_reply_is_refused_naming_its_site(
        dataset: Path, honest: tuple[RunConfig, dict[str, Fingerprint]],
        tamper: Callable[[ConfigRecord], None], expected: str) -> None:
    cfg, _ = honest
    app = client_app.make_client_app({RunKey.CONFIG.value: config_text(cfg)})

    def hostile(message: Message, context: Context) -> Message:
        reply = app(message, context)
        if context.node_config["site"] == "siteB" and message.metadata.message_type == PlanAction.FINGERPRINT:
            tamper(reply.content.config_records[PLAN_RECORD])
        return reply

    grid = DirectGrid(hostile, [{"site": "siteA"}, {"site": "siteB"}])  # type: ignore[arg-type]
    with pytest.raises(PlanError, match=expected):
        request_plan(grid, cfg)
    assert not [m for m in grid.sent if m.metadata.message_type == PlanAction.RESULT]  # no plan went out
