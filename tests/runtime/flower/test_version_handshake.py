"""The version handshake: sites report fedseg, torch, MONAI and flwr versions in their hello reply;
the ServerApp refuses a site on other versions (``flower.version_policy``) before any training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_config
from flower_testlib import DirectGrid
from fedseg.config import ConfigError, config_from_dict
from fedseg.io.packages import package_versions
from fedseg.runtime.common import config_text
from fedseg.runtime.flower.client_app import make_client_app
from fedseg.runtime.flower.handshake import VersionMismatchError, check_versions
from fedseg.runtime.flower.keys import Action, Field, Record, RunKey
from fedseg.runtime.flower.server_app import run_server

SERVER = {"fedseg": "0.1.0", "torch": "2.13.0+cpu", "monai": "1.6.1", "flwr": "1.42.0", "python": "3.11.7"}


@pytest.mark.parametrize(
    ("change", "minor", "exact"),
    [
        ({"torch": "2.13.1+cu126"}, True, False),  # another patch release and build: same major.minor
        ({"torch": "2.13.0+cu126"}, True, True),  # a build label alone never differs
        ({"monai": "1.5.2"}, False, False),
        ({"flwr": "1.42.1"}, False, False),  # Flower internals: identical
        ({"fedseg": "0.2.0"}, False, False),
        ({"python": "3.12.1"}, True, True),  # recorded, not compared
    ],
)
def test_policies(change: dict[str, str], minor: bool, exact: bool) -> None:
    sites = {"a": SERVER, "b": {**SERVER, **change}}
    for policy, accepted in (("minor", minor), ("exact", exact)):
        if accepted:
            check_versions(sites, SERVER, policy)
        else:
            with pytest.raises(VersionMismatchError, match=f"site 'b' runs .*differs: {next(iter(change))}"):
                check_versions(sites, SERVER, policy)
    check_versions(sites, SERVER, "off")


def test_a_site_without_versions_reads_unknown_and_the_policy_is_validated() -> None:
    with pytest.raises(VersionMismatchError, match="site 'old' runs fedseg unknown, torch unknown"):
        check_versions({"old": {}}, SERVER, "minor")
    with pytest.raises(ConfigError, match="version_policy"):
        config_from_dict(tiny_config("fedavg", flower={"version_policy": "major"}))


def _run(tmp_path: Path, policy: str, torch_of_site1: str) -> Path:
    cfg = config_from_dict(tiny_config("fedavg", rounds=1, sites=2, flower={"version_policy": policy}))
    run_dir = tmp_path / policy
    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(run_dir)}
    real = make_client_app(run_config)

    def client_app(message: Any, context: Any) -> Any:  # node 101 (site1) was installed with another torch
        reply = real(message, context)
        if message.metadata.message_type == Action.HELLO.value and context.node_id == 101:
            reply.content.config_records[Record.HELLO.value][f"{Field.VERSION_PREFIX.value}torch"] = torch_of_site1
        return reply

    grid = DirectGrid(client_app, [{"partition-id": 0}, {"partition-id": 1}])  # type: ignore[arg-type]
    run_server(grid, run_config, engine="flower-sim", expected_nodes=2, write_report=False)
    return run_dir


@pytest.mark.slow
@pytest.mark.usefixtures("flower_process")
def test_a_site_on_another_torch_is_refused_by_name_before_training(tmp_path: Path) -> None:
    ours = package_versions()
    with pytest.raises(VersionMismatchError) as refused:
        _run(tmp_path, "minor", "2.12.1")
    text = str(refused.value)
    assert f"1 site(s) run other versions than the server (fedseg {ours['fedseg']}, torch {ours['torch']}" in text
    assert "- site 'site1' runs" in text and "torch 2.12.1" in text and "(differs: torch)" in text
    assert "site0" not in text and "flower.version_policy minor" in text
    assert not (tmp_path / "minor" / "metrics.jsonl").exists() or not (tmp_path / "minor" / "metrics.jsonl").read_text()
    # accepted when the policy is off; every site's versions and the server's are recorded
    info = json.loads((_run(tmp_path, "off", "2.12.1") / "run_info.json").read_text())
    assert info["versions"] == ours
    assert info["flower"]["site1"]["versions"] == {**ours, "torch": "2.12.1"}
    assert info["flower"]["site0"]["versions"] == ours
