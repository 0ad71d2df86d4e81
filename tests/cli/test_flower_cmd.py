"""``fedseg flower ...`` helpers and ``fedseg run --engine`` checks (fast: nothing starts Flower)."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from conftest import tiny_config
from fake_datasets import write_png_case, write_png_site
from fedseg.cli.main import app
from fedseg.config import ConfigError, config_from_dict

runner = CliRunner()


def _cfg(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_certs_make_a_ca_a_server_certificate_for_the_hosts_and_supernode_keys(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = runner.invoke(app, ["flower", "certs", str(out), "--host", "fl.example.org", "--host", "10.1.2.3",
                                 "--supernode", "hospital-a"])
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"fl.example.org", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"10.1.2.3", "127.0.0.1"}
    key = load_pem_private_key((out / "server.key").read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()  # type: ignore[union-attr]
    for private in ("ca.key", "server.key", "hospital-a", "app-signing.key"):
        assert stat.S_IMODE((out / private).stat().st_mode) == 0o600, private
    node_key = load_ssh_private_key((out / "hospital-a").read_bytes(), None)
    node_pub = load_ssh_public_key((out / "hospital-a.pub").read_bytes())
    assert isinstance(node_key, ec.EllipticCurvePrivateKey) and isinstance(node_pub, ec.EllipticCurvePublicKey)
    # the names the certificate is valid for are printed, to check against SUPERLINK_HOST
    assert "fl.example.org, 10.1.2.3, localhost, 127.0.0.1" in result.output.replace("\n", " ")
    again = runner.invoke(app, ["flower", "certs", str(out), "--host", "fl.example.org"])
    assert again.exit_code == 2 and "exists" in again.output and "--overwrite" in again.output


def test_connection_needs_tls_or_an_explicit_insecure_with_a_warning(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    refused = runner.invoke(app, ["flower", "connection", "x", "127.0.0.1:9093"])
    assert refused.exit_code == 2 and "--root-certificates" in refused.output
    ca = tmp_path / "ca.crt"
    ca.write_text("pem")
    assert runner.invoke(app, ["flower", "connection", "tls", "fl:9093", "--root-certificates", str(ca)]).exit_code == 0
    insecure = runner.invoke(app, ["flower", "connection", "test", "127.0.0.1:9093", "--insecure", "--no-default"])
    assert insecure.exit_code == 0 and "warning" in insecure.output and "unencrypted" in insecure.output
    config = tomllib.loads((tmp_path / "home" / "config.toml").read_text())
    assert config["superlink"]["default"] == "tls"
    assert config["superlink"]["tls"] == {"address": "fl:9093", "root-certificates": str(ca.resolve())}
    assert config["superlink"]["test"] == {"address": "127.0.0.1:9093", "insecure": True}


def test_app_writes_the_flower_app_section_with_the_resolved_config(tmp_path: Path) -> None:
    from fedseg.runtime.flower.client_app import load_run_config

    out = tmp_path / "app"
    result = runner.invoke(app, ["flower", "app", str(out), str(_cfg(tmp_path, tiny_config("fedbn"))),
                                 "--run-dir", "/srv/runs/x", "--set", "federation.rounds=4"])
    assert result.exit_code == 0, result.output
    project = tomllib.loads((out / "pyproject.toml").read_text())
    flwr = project["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "fedseg.runtime.flower.server_app:app",
                                  "clientapp": "fedseg.runtime.flower.client_app:app"}
    assert flwr["config"]["run-dir"] == "/srv/runs/x"
    cfg = load_run_config(flwr["config"])
    assert cfg.algorithm["name"] == "fedbn" and cfg.federation.rounds == 4


def test_app_refuses_the_centralized_reference(tmp_path: Path) -> None:
    result = runner.invoke(app, ["flower", "app", str(tmp_path / "a"), str(_cfg(tmp_path, tiny_config("centralized"))),
                                 "--run-dir", "r"])
    assert result.exit_code == 2 and "pools every site" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "flower-sim", "--resume"], "--resume: no checkpoint"),
        (["--engine", "flower"], "allowed inprocess, flower-sim"),
        (["--engine", "ray"], "allowed inprocess, flower-sim"),
    ],
)
def test_run_engine_refusals(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["run", str(_cfg(tmp_path, tiny_config())), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2 and message in result.output.replace("\n", " ")


def test_run_refuses_the_deployment_engine_set_in_the_config(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(_cfg(tmp_path, {**tiny_config(), "engine": "flower"})),
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "flwr run" in result.output


def test_clientapp_refuses_a_remote_runtime_api_without_tls() -> None:
    result = runner.invoke(app, ["flower", "clientapp", "--runtime-api-address", "10.0.0.5:9094"])
    assert result.exit_code == 2 and "--root-certificates" in result.output


def test_secure_aggregation_is_rejected_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="SecAgg\\+ only through its legacy API"):
        config_from_dict({"flower": {"secure_aggregation": True}})


def test_flower_sim_checks_the_data_before_the_simulation_starts(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same pre-training check as in-process: exit 2 with every file and its problem, and Flower's
    simulation is never started."""
    import fedseg.runtime.flower.simulation as simulation

    def never(**kwargs: object) -> None:
        raise AssertionError("the simulation started despite bad data")

    monkeypatch.setattr(simulation, "run_simulation", never)
    root = tmp_path / "data"
    write_png_site(root / "A", 3)
    write_png_site(root / "B", 3)
    write_png_case(root / "B", "seven", label=7)
    write_png_case(root / "B", "wrongsize", mask_size=(10, 10))
    cfg = {**tiny_config(), "data": {"source": "folder", "root": str(root), "image_size": [8, 8]}}
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_cfg(tmp_path, cfg)), "--engine", "flower-sim", "--out", str(out)])
    assert result.exit_code == 1, result.output  # a data error (fedseg -h: exit codes)
    flat = "".join(result.output.split())
    assert "2problem(s)" in flat
    for path, problem in ((root / "B" / "masks" / "seven.png", "mask values 7 are not in the label map"),
                          (root / "B" / "masks" / "wrongsize.png", "size mismatch")):
        assert "".join(f"{path}: {problem}".split()) in flat, (path, result.output)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    assert not (out / "splits.json").exists()


def test_insecure_site_processes_warn_and_tls_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedseg.runtime.flower.supernode as supernode
    import fedseg.runtime.flower.worker as worker

    started: list[tuple[object, ...]] = []
    monkeypatch.setattr(supernode, "run_supernode", lambda args, **kw: started.append(("supernode", *args)))
    monkeypatch.setattr(worker, "serve_clientapps",
                        lambda address, insecure, root_certificates, **kw: started.append(
                            ("clientapp", address, insecure)) or 0)

    tls = runner.invoke(app, ["flower", "supernode", "--superlink", "fl:9093", "--root-certificates", "ca.crt"])
    assert tls.exit_code == 0 and "warning" not in tls.output
    plain = runner.invoke(app, ["flower", "supernode", "--insecure", "--superlink", "fl:9093"])
    assert plain.exit_code == 0 and "warning" in plain.output and "unencrypted" in plain.output
    assert started[:2] == [("supernode", "--superlink", "fl:9093", "--root-certificates", "ca.crt"),
                           ("supernode", "--insecure", "--superlink", "fl:9093")]

    local = runner.invoke(app, ["flower", "clientapp", "--runtime-api-address", "127.0.0.1:9094"])
    assert local.exit_code == 0 and "warning" not in local.output  # the SuperNode's loopback Runtime API
    remote = runner.invoke(app, ["flower", "clientapp", "--runtime-api-address", "10.0.0.5:9094", "--insecure"])
    assert remote.exit_code == 0 and "warning" in remote.output and "unencrypted" in remote.output
    assert started[2:] == [("clientapp", "127.0.0.1:9094", True), ("clientapp", "10.0.0.5:9094", True)]


def test_a_signed_app_passes_the_sites_check_and_an_unsigned_one_does_not(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    from fedseg.runtime.flower.trust import AppRefused, check_fab, check_signature, load_trusted_keys

    certs = tmp_path / "certs"
    assert runner.invoke(app, ["flower", "certs", str(certs), "--host", "fl"]).exit_code == 0
    cfg = _cfg(tmp_path, tiny_config("fedavg"))
    signed = runner.invoke(app, ["flower", "app", str(tmp_path / "signed"), str(cfg), "--run-dir", "/r",
                                 "--sign-key", str(certs / "app-signing.key")])
    assert signed.exit_code == 0 and "signed" in signed.output, signed.output
    unsigned = runner.invoke(app, ["flower", "app", str(tmp_path / "unsigned"), str(cfg), "--run-dir", "/r"])
    assert unsigned.exit_code == 0 and "unsigned" in unsigned.output
    trusted = load_trusted_keys([certs / "app-signing.pub"])
    for name in ("signed", "unsigned"):
        check_fab(build_fab_from_disk(tmp_path / name))  # both are fedseg apps
    check_signature(tomllib.loads((tmp_path / "signed" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
                    ["config"], trusted)
    with pytest.raises(AppRefused):
        check_signature(tomllib.loads((tmp_path / "unsigned" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
                        ["config"], trusted)
    wrong = runner.invoke(app, ["flower", "app", str(tmp_path / "x"), str(cfg), "--run-dir", "/r",
                                "--sign-key", str(certs / "ca.key")])  # not an Ed25519 key
    assert wrong.exit_code == 2 and "--sign-key" in wrong.output and "Ed25519" in wrong.output


def test_clientapp_and_superlink_options_are_checked(tmp_path: Path) -> None:
    (tmp_path / "bad.pub").write_text("not a key\n")
    bad = runner.invoke(app, ["flower", "clientapp", "--trusted-app-key", str(tmp_path / "bad.pub")])
    assert bad.exit_code == 2 and "--trusted-app-key" in bad.output
    no_port = runner.invoke(app, ["flower", "superlink", "--fleet-address", "0.0.0.0"])
    assert no_port.exit_code == 2 and "HOST:PORT" in no_port.output
    wait = runner.invoke(app, ["flower", "supernode", "--heartbeat-interval", "3"])
    assert wait.exit_code == 2 and "--heartbeat-interval" in wait.output
