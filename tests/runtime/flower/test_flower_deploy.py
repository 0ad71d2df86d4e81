"""Acceptance: a real deployment on 127.0.0.1 -- SuperLink with TLS, two SuperNodes (process
isolation + the long-lived fedseg ClientApp process), 2 rounds of FedAvg then FedBN submitted with
``flwr run`` -- writes per-site metrics, and FedBN's normalisation parameters are never sent."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.models import build_model
from fedseg.runtime.flower.certs import make_certificates
from fedseg.runtime.flower.executor import RECEIVED_KEYS_FILE
from fedseg.runtime.flower.loopback import LoopbackFederation, bin_path, free_port, wait_for_port
from fedseg.runtime.flower.project import write_app, write_connection

pytestmark = pytest.mark.slow

SITES = ["site0", "site1"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackFederation]:
    work = tmp_path_factory.mktemp("deploy")
    certs = make_certificates(work / "certs", ["127.0.0.1"])
    port = free_port()
    with LoopbackFederation(work) as fed:
        superlink = fed.start("superlink", [
            bin_path("flower-superlink"), "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile",
            str(certs.server_cert), "--ssl-keyfile", str(certs.server_key), "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port),
        ])
        wait_for_port(port, 60, proc=superlink)
        for site in SITES:
            runtime = free_port()
            fed.start(f"supernode_{site}", [
                bin_path("fedseg"), "flower", "supernode", "--idle-poll", "0.2",
                "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(certs.ca_cert),
                "--isolation", "process", "--port", str(runtime), "--node-config", f'site="{site}"',
            ])
            fed.start(f"clientapp_{site}", [bin_path("fedseg"), "flower", "clientapp", "--runtime-api-address",
                                            f"127.0.0.1:{runtime}"])
        write_connection("loop", f"127.0.0.1:{port}", root_certificates=certs.ca_cert, home=fed.flwr_home)
        yield fed


def _submit(fed: LoopbackFederation, algorithm: str, *, override_run_dir: bool = False) -> Path:
    cfg = config_from_dict(tiny_config(algorithm, rounds=2, sites=2, flower={"connect_timeout": 120,
                                                                            "reply_timeout": 120}))
    run_dir = fed.workdir / "runs" / algorithm
    # docs/deployment.md: `flwr run ... --run-config 'run-dir="..."'` overrides the app's value once
    write_app(fed.workdir / f"app_{algorithm}", cfg, fed.workdir / "runs" / "unused" if override_run_dir else run_dir)
    extra = ["--run-config", f'run-dir="{run_dir}"'] if override_run_dir else []
    fed.run([bin_path("flwr"), "run", str(fed.workdir / f"app_{algorithm}"), "loop", "--stream", *extra],
            timeout=240)
    deadline = time.monotonic() + 60
    while not (run_dir / "summary.json").is_file():
        assert time.monotonic() < deadline, f"no summary.json in {run_dir}\n{fed.logs_tail()}"
        time.sleep(0.5)
    return run_dir


def _check_run_dir(run_dir: Path, algorithm: str) -> list[dict[str, object]]:
    for name in ("config.yaml", "command.txt", "run_info.json", "checkpoints/last.pt", "report.md"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["engine"] == "flower" and info["algorithm"] == algorithm and info["sites"] == SITES
    records = read_metrics(run_dir / "metrics.jsonl")
    for kind in ("train", "eval"):
        assert {r["site"] for r in records if r["kind"] == kind} == set(SITES), kind
    assert {r["round"] for r in records if r["kind"] == "train"} == {1, 2}
    assert all(r["bytes_up"] > 0 for r in records if r["kind"] == "train")
    test = [r for r in records if r.get("kind") == "eval" and r.get("split") == "test"]
    assert {r["site"] for r in test} == set(SITES) and all(0 <= float(str(r["dice"])) <= 1 for r in test)
    return records


def test_fedavg_then_fedbn_on_a_tls_loopback_deployment(federation: LoopbackFederation) -> None:
    fedavg = _submit(federation, "fedavg")
    _check_run_dir(fedavg, "fedavg")

    fedbn = _submit(federation, "fedbn", override_run_dir=True)
    records = _check_run_dir(fedbn, "fedbn")
    assert not (federation.workdir / "runs" / "unused").exists()  # --run-config won over the app's run-dir
    assert {r["site"] for r in records if r.get("model") == "personal"} == set(SITES)
    model = build_model(config_from_dict(tiny_config("fedbn")).model, 2, 1, 2)
    norm = build_algorithm({"name": "fedbn"}).local_keys(model)
    received = json.loads((fedbn / RECEIVED_KEYS_FILE).read_text())
    assert set(received) == set(SITES)
    for site, keys in received.items():
        assert keys["params"] and not norm & set(keys["params"]), site
        assert set(keys["params"]) == set(model.state_dict()) - norm
    # the long-lived ClientApp processes served every message of both runs
    for site in SITES:
        assert "ClientApp task" in federation.log_text(f"clientapp_{site}")
