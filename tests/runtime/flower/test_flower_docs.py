"""docs/deployment.md, executed: every ``bash`` block of the page runs, in order, on 127.0.0.1 with
the page's variables set for a loopback "three machines" (server, hospital-a, hospital-b; TLS,
SuperNode authentication, folder data). A documented command that breaks fails this test. Then:
a SuperNode without valid credentials cannot join; someone holding only ``ca.crt`` can neither
register a SuperNode key nor submit a run; a site refuses a run the operator did not sign."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flower_testlib import write_folder_sites, write_foreign_app
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.runtime.flower.certs import make_supernode_keys
from fedseg.runtime.flower.loopback import LoopbackFederation, bin_path, free_port, wait_for_port
from fedseg.runtime.flower.project import write_app, write_connection

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[3] / "docs" / "deployment.md"
STEP = re.compile(r"<!-- step: (?P<name>[\w-]+)(?P<opts>[^>]*?)\s*-->\s*```bash\n(?P<body>.*?)```", re.S)
SITES = ["hospital-a", "hospital-b"]


@dataclass
class Step:
    name: str
    body: str
    background: bool
    site: str | None  # None: the server; "each": every site; else one site


def doc_steps(text: str) -> list[Step]:
    steps = []
    for m in STEP.finditer(text):
        opts = m["opts"].split()
        site = next((o.split("=", 1)[1] for o in opts if o.startswith("site=")), None)
        steps.append(Step(m["name"], m["body"], "background" in opts, site))
    return steps


def test_every_bash_block_of_the_page_is_a_step() -> None:
    text = DOC.read_text()
    assert len(re.findall(r"```bash\n", text)) == len(doc_steps(text)) > 5


def _doc_config(text: str) -> dict[str, object]:
    m = re.search(r"<!-- config -->\s*```yaml\n(.*?)```", text, re.S)
    assert m, "docs/deployment.md lost its example configuration"
    raw = yaml.safe_load(m.group(1))
    config_from_dict(raw)  # the documented configuration is valid as written
    return dict(raw)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackFederation, dict[str, str]]]:
    text = DOC.read_text()
    work = tmp_path_factory.mktemp("doc")
    write_folder_sites(work / "data", SITES)
    raw = _doc_config(text)
    raw["data"] = {**dict(raw["data"]), "root": str(work / "data"), "image_size": [16, 16]}  # type: ignore[arg-type]
    raw.update(federation={"rounds": 2}, model={"channels": [4, 8], "strides": [2], "num_res_units": 0},
               train={"batch_size": 4, "lr": 0.01}, flower={"connect_timeout": 120, "reply_timeout": 120})
    (work / "multicenter.yaml").write_text(yaml.safe_dump(raw))
    port = free_port()
    server = {"SUPERLINK_HOST": "127.0.0.1", "SUPERLINK_PORT": str(port), "SUPERLINK_BIND": "127.0.0.1",
              "CONTROL_PORT": str(free_port()), "CERTS": str(work / "certs"), "CONFIG": str(work / "multicenter.yaml"), "APP": str(work / "app"),
              "RUN_DIR": str(work / "runs" / "multicenter_fedbn")}
    sites = {site: {**server, "SITE": site, "SITE_KEY": str(work / "certs" / site), "CA_CERT": str(work / "certs/ca.crt"),
                    "APP_KEY": str(work / "certs/app-signing.pub"), "DATA_ROOT": str(work / "data"),
                    "RUNTIME_PORT": str(free_port())} for site in SITES}
    prelude = ""
    with LoopbackFederation(work) as fed:
        for step in doc_steps(text):
            if step.name == "env":
                prelude += step.body
                continue
            targets = [None] if step.site is None else SITES if step.site == "each" else [step.site]
            for site in targets:
                env = server if site is None else sites[site]
                script = f"set -euo pipefail\n{prelude}\n{'exec ' if step.background else ''}{step.body}"
                label = f"{step.name}_{site or 'server'}"
                if step.background:
                    proc = fed.start(label, ["bash", "-c", script], env=env)
                    if step.name == "superlink":
                        wait_for_port(port, 60, proc=proc)
                else:
                    done = fed.run(["bash", "-c", script], timeout=300, env=env)
                    (work / "logs" / f"{label}.out").write_text(done.stdout + done.stderr)
        yield fed, server


def test_the_documented_deployment_runs(deployed: tuple[LoopbackFederation, dict[str, str]]) -> None:
    fed, env = deployed
    run_dir = Path(env["RUN_DIR"])
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "summary.json", "report.md",
                 "received_keys.json"):
        assert (run_dir / name).is_file(), f"{name}\n{fed.logs_tail()}"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["engine"] == "flower" and info["algorithm"] == "fedbn" and info["sites"] == SITES
    records = read_metrics(run_dir / "metrics.jsonl")
    assert {r["site"] for r in records if r["kind"] == "train"} == set(SITES)
    assert {(r["site"], r["model"]) for r in records if r.get("kind") == "eval" and r.get("split") == "test"} == {
        (s, m) for s in SITES for m in ("global", "personal")}
    assert "fedbn" in (fed.workdir / "logs" / "results_server.out").read_text()  # flwr list / fedseg report ran
    for site in SITES:  # the sites' own data check (step 6) passed; they reported split digests, not ids
        assert "no errors" in (fed.workdir / "logs" / f"datacheck_{site}.out").read_text()
        assert set(info["flower"][site]["split_sha256"]) == {"train", "val", "test"}
    assert not (run_dir / "splits.json").exists()


def test_a_supernode_without_valid_credentials_cannot_join(deployed: tuple[LoopbackFederation, dict[str, str]]
                                                           ) -> None:
    fed, env = deployed
    (private, _), = make_supernode_keys(fed.workdir / "intruder", ["intruder"]).values()
    base = [bin_path("flower-supernode"), "--superlink", f"127.0.0.1:{env['SUPERLINK_PORT']}",
            "--root-certificates", f"{env['CERTS']}/ca.crt", "--isolation", "process", "--max-retries", "2",
            "--max-wait-time", "20", "--node-config", 'site="hospital-a"']
    unregistered = fed.start("intruder_key", [*base, "--port", str(free_port()), "--auth-supernode-private-key",
                                              str(private)])
    keyless = fed.start("intruder_nokey", [*base, "--port", str(free_port())])
    for name, proc in (("intruder_key", unregistered), ("intruder_nokey", keyless)):
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() not in (None, 0), f"{name} was not refused\n{fed.log_text(name)[-1500:]}"
        assert "SuperNode ID" not in fed.log_text(name), name
    listed = fed.run([bin_path("flwr"), "supernode", "list", "fedseg", "--format", "json"], timeout=60,
                     env=env)
    nodes = json.loads(listed.stdout[listed.stdout.index("{"):])["nodes"]
    assert len(nodes) == 2  # the two registered hospitals, nobody else


def _nodes(fed: LoopbackFederation, env: dict[str, str]) -> set[str]:
    listed = fed.run([bin_path("flwr"), "supernode", "list", "fedseg", "--format", "json"], timeout=60, env=env)
    return {str(n["node-id"]) for n in json.loads(listed.stdout[listed.stdout.index("{"):])["nodes"]}


def test_a_holder_of_ca_crt_can_neither_register_a_node_nor_submit(deployed: tuple[LoopbackFederation,
                                                                                      dict[str, str]]) -> None:
    """The probe's attack: a second Flower home with only ``ca.crt``, on the port the sites reach."""
    fed, env = deployed
    home = fed.workdir / "intruder_home"
    write_connection("mole", f"127.0.0.1:{env['SUPERLINK_PORT']}", root_certificates=Path(env["CERTS"]) / "ca.crt",
                     home=home)
    mole_env = {**env, "FLWR_HOME": str(home)}
    (_, public), = make_supernode_keys(fed.workdir / "mole_keys", ["mole"]).values()
    before = _nodes(fed, env)
    attempts = {
        "register": ["supernode", "register", str(public), "mole"],
        "list": ["supernode", "list", "mole"],
        "submit": ["run", str(write_foreign_app(fed.workdir / "mole_app")), "mole"],
        "submit-fedseg": ["run", str(fed.workdir / "app"), "mole"],
    }
    for name, args in attempts.items():
        done = fed.run([bin_path("flwr"), *args], timeout=120, check=False, env=mole_env)
        out = done.stdout + done.stderr
        assert done.returncode != 0 and "forbidden" in out, f"{name} was not refused:\n{out[-1500:]}"
    assert _nodes(fed, env) == before  # nothing registered
    runs = fed.run([bin_path("flwr"), "list", "fedseg", "--format", "json"], timeout=60, env=env)
    assert "mole" not in runs.stdout
    assert not list(fed.workdir.rglob("PWNED"))


def test_a_site_refuses_a_run_the_operator_did_not_sign(deployed: tuple[LoopbackFederation, dict[str, str]]) -> None:
    """What remains if the Control API were reached anyway: the sites run only signed fedseg runs."""
    fed, env = deployed
    cfg = config_from_dict(yaml.safe_load(Path(env["CONFIG"]).read_text()))
    run_dir = fed.workdir / "runs" / "unsigned"
    write_app(fed.workdir / "unsigned_app", cfg, run_dir)  # no --sign-key
    fed.run([bin_path("flwr"), "run", str(fed.workdir / "unsigned_app"), "fedseg", "--stream"], timeout=240,
            check=False, env=env)
    for site in SITES:
        log = fed.log_text(f"clientapp_{site}")
        assert "refused a ClientApp task" in log and "not signed" in log, site
    assert not (run_dir / "metrics.jsonl").is_file() or not [
        r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
