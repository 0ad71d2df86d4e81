"""Files a deployment needs besides certificates: the Flower app directory that ``flwr run``
submits, and the ``flwr`` CLI's SuperLink connection in ``$FLWR_HOME/config.toml``.

The app directory holds only a ``pyproject.toml``: fedseg is installed on every machine, so the
app's components are fedseg's own ServerApp and ClientApp, and the run config carries the fedseg
configuration as YAML text (``fedseg-config``), the run directory on the SuperLink machine
(``run-dir``) and the command to record. ``flwr run APP SUPERLINK --run-config 'run-dir="..."'``
overrides a value for one submission.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from fedseg.config import RunConfig
from fedseg.io.atomic import atomic_write_text
from fedseg.runtime.common import config_text
from fedseg.runtime.flower.keys import RunKey

__all__ = ["APP_COMPONENTS", "APP_FILES", "APP_NAME", "APP_PUBLISHER", "app_pyproject", "write_app",
           "write_connection", "flwr_home"]

APP_COMPONENTS = {
    "serverapp": "fedseg.runtime.flower.server_app:app",
    "clientapp": "fedseg.runtime.flower.client_app:app",
}
"""The ``[tool.flwr.app.components]`` of every fedseg Flower app."""

APP_NAME = "fedseg-app"
APP_PUBLISHER = "fedseg"
APP_FILES = frozenset({"pyproject.toml", "fedseg.yaml"})
"""The files of a fedseg app directory: a site refuses an app (FAB) holding any other
(:func:`fedseg.runtime.flower.trust.check_fab`)."""


def app_pyproject(cfg: RunConfig, run_dir: Path, *, command: str | None = None, version: str = "1.0.0",
                  signature: str | None = None, plan_only: bool = False) -> dict[str, Any]:
    """The ``pyproject.toml`` of a fedseg Flower app for ``cfg`` as a mapping; ``signature``: the
    operator's signature of ``config_text(cfg)`` (:func:`fedseg.runtime.flower.trust.sign_config`);
    ``plan_only``: the ServerApp runs only the planning round (always written, so that ``flwr run
    --run-config 'fedseg-plan-only=true'`` can switch it for one submission)."""
    config: dict[str, Any] = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(run_dir),
                              RunKey.PLAN_ONLY.value: plan_only}
    if signature:
        config[RunKey.SIGNATURE.value] = signature
    if command:
        config[RunKey.COMMAND.value] = command
    return {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": APP_NAME,
            "version": version,
            "description": f"fedseg federation {cfg.name!r}: {cfg.algorithm['name']}",
            "license": "Apache-2.0",
            "dependencies": ["fedseg"],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": APP_PUBLISHER,
                    "components": dict(APP_COMPONENTS),
                    "config": config,
                }
            }
        },
    }


def write_app(out_dir: Path, cfg: RunConfig, run_dir: Path, *, command: str | None = None,
              sign_key: Path | None = None, plan_only: bool = False) -> Path:
    """Write the Flower app directory for ``cfg`` (``pyproject.toml`` + a copy of the config).

    Args:
        out_dir: the app directory (created; an existing pyproject.toml is replaced).
        run_dir: where the ServerApp writes the run directory, on the SuperLink machine; a relative
            path is relative to the SuperLink's working directory.
        sign_key: the operator's Ed25519 private key: sign the configuration, so that sites
            started with ``--trusted-app-key`` run it (docs/deployment.md).
        plan_only: the ServerApp plans (``plans.yaml`` in ``run_dir``) instead of training.

    Returns:
        The path of ``pyproject.toml``.

    Raises:
        ValueError: ``sign_key`` is not a readable Ed25519 private key.
    """
    signature = None
    if sign_key is not None:
        from fedseg.runtime.flower.trust import load_signing_key, sign_config

        signature = sign_config(config_text(cfg), load_signing_key(sign_key))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "pyproject.toml"
    atomic_write_text(path, tomli_w.dumps(app_pyproject(cfg, run_dir, command=command, signature=signature,
                                                        plan_only=plan_only),
                                          multiline_strings=True))
    atomic_write_text(out_dir / "fedseg.yaml", config_text(cfg))
    return path


def flwr_home() -> Path:
    """``$FLWR_HOME``, or ``~/.flwr`` as the ``flwr`` CLI uses."""
    home = os.environ.get("FLWR_HOME")
    return Path(home).expanduser() if home else Path.home() / ".flwr"


def write_connection(
    name: str,
    address: str,
    *,
    root_certificates: Path | None,
    insecure: bool = False,
    default: bool = True,
    home: Path | None = None,
) -> Path:
    """Add (or replace) SuperLink connection ``name`` in ``$FLWR_HOME/config.toml``.

    Args:
        address: the SuperLink as ``host:port`` (the port of ``flower-superlink --port``).
        root_certificates: the CA certificate that signed the SuperLink's certificate.
        insecure: plain HTTP (only with a SuperLink started with ``--insecure``).
        default: make it the connection ``flwr`` uses when none is named.

    Raises:
        ValueError: neither ``root_certificates`` nor ``insecure``, or both.
    """
    if (root_certificates is None) == (not insecure):
        raise ValueError("give either root_certificates (TLS, the default) or insecure=True, not both or neither")
    home = home or flwr_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    data: dict[str, Any] = tomllib.loads(path.read_text()) if path.is_file() else {}
    superlink = data.setdefault("superlink", {})
    entry: dict[str, Any] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(str(root_certificates)).expanduser().resolve())
    superlink[name] = entry
    if default or "default" not in superlink:
        superlink["default"] = name
    atomic_write_text(path, tomli_w.dumps(data))  # the user's flwr connections: never half-written
    return path
