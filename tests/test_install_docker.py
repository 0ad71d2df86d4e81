"""docker/: the site and server images name only pinned versions and copy what the app needs; the
compose federation uses TLS, read-only data and fedseg's own commands (no container runtime here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedseg import __version__
from fedseg.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
FILES = {"site": DOCKER / "site.Dockerfile", "server": DOCKER / "server.Dockerfile"}


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.lower().split("==", 1) for line in lines if line and not line.startswith("#"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _args(path: Path) -> dict[str, str]:
    return dict(value.split("=", 1) for op, value in _instructions(path) if op == "ARG" and "=" in value)


@pytest.mark.parametrize("kind", sorted(FILES))
def test_build_files_name_only_pinned_versions(kind: str) -> None:
    path = FILES[kind]
    args, steps = _args(path), _instructions(path)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base  # a full version tag
    assert [v for op, v in steps if op == "FROM"] == ["${PYTHON_IMAGE}"]
    assert args["TORCH_VERSION"] == _pins()["torch"] and args["TORCH_VARIANT"] == "cpu"
    installs = [v for op, v in steps if op == "RUN" and "pip install" in v]
    assert installs[0].startswith("pip install --index-url https://download.pytorch.org/whl/${TORCH_VARIANT} "
                                  "torch==${TORCH_VERSION}")
    for step in installs[1:]:  # every other package through the lock
        words = shlex.split(step.split("&&")[0])
        assert words[:4] == ["pip", "install", "-c", "constraints.txt"] and words[4] in (".", ".[report]"), step


@pytest.mark.parametrize("kind", sorted(FILES))
def test_build_files_copy_what_the_app_needs_and_run_as_a_user(kind: str) -> None:
    steps = _instructions(FILES[kind])
    copied = " ".join(v for op, v in steps if op == "COPY")
    for needed in ("constraints.txt", "pyproject.toml", "README.md", "src"):  # README: pyproject's readme
        assert needed in copied, needed
    users = [v for op, v in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(v for op, v in steps if op == "ENV")
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in env  # flwr run never installs a CUDA torch
    if kind == "site":  # a hospital installs neither extra; its cache has its own volume
        assert "[" not in " ".join(v for op, v in steps if op == "RUN" and "pip install -c" in v)
        assert "FEDSEG_CACHE_DIR=/cache" in env and '"/cache"' in " ".join(v for op, v in steps if op == "VOLUME")


def _compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    return services


def _command(service: dict[str, object]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list)
    return shlex.split(command[2]) if command[:2] == ["sh", "-c"] else [str(c) for c in command]


def test_compose_is_a_tls_federation_of_one_server_and_two_sites() -> None:
    services = _compose()
    for name, service in services.items():
        image = str(service["image"])
        assert image.split(":")[1].startswith(f"{__version__}-"), (name, image)  # the fedseg release in every tag
        assert "--insecure" not in _command(service), name
    for site in ("hospital-a", "hospital-b"):
        node, client = _command(services[site]), services[f"{site}-clientapp"]
        assert node[0] == "flower-supernode" and "--root-certificates" in node and "--auth-supernode-private-key" in node
        assert node[node.index("--isolation") + 1] == "process"
        assert client["network_mode"] == f"service:{site}"  # the Runtime API stays on the loopback
        volumes = [str(v) for v in client["volumes"]]  # type: ignore[attr-defined]
        data = [v for v in volumes if v.endswith(f":/data/{site}:ro")]
        assert data, volumes  # the images read-only
        assert any(v.endswith(":/cache") for v in volumes)  # the cache on its own volume
        assert "--trusted-app-key" in _command(client)
    link = _command(services["superlink"])
    assert link[:3] == ["fedseg", "flower", "superlink"] and "--ssl-certfile" in link and "--enable-supernode-auth" in link


@pytest.mark.parametrize("service", ["certs", "register", "hospital-a-clientapp"])
def test_compose_commands_are_fedsegs_own(service: str) -> None:
    words = _command(_compose()[service])
    for part in " ".join(words).split(" && "):  # each fedseg command parses (options exist): --help stops it there
        argv = shlex.split(part.replace("test -f /certs/ca.crt ||", ""))
        if argv[:1] != ["fedseg"]:
            continue
        result = CliRunner().invoke(app, [*argv[1:], "--help"])
        assert result.exit_code == 0, (part, result.output)
