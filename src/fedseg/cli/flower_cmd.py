"""``fedseg flower ...``: helpers for a Flower deployment (see docs/deployment.md).

* ``fedseg flower certs``: a CA, the SuperLink's TLS certificate and SuperNode key pairs;
* ``fedseg flower connection``: the ``flwr`` CLI's SuperLink connection in ``$FLWR_HOME/config.toml``;
* ``fedseg flower app``: the Flower app directory (``pyproject.toml``) that ``flwr run`` submits
  (``--plan-only``: an app that runs the planning round; ``--plans``: one that trains under a plan);
* ``fedseg flower clientapp``: the long-lived ClientApp process of a SuperNode started with
  ``--isolation process``.
* ``fedseg flower supernode``: Flower's SuperNode with its polling sleeps shortened (optional).
* ``fedseg flower superlink``: Flower's SuperLink whose public port serves only the Fleet API.

Flower itself (``flwr``) is imported only when a command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["app", "run_flower_engine"]

app = typer.Typer(no_args_is_help=True, help="Flower deployment helpers (docs/deployment.md).")
console = Console()
err_console = Console(stderr=True)
logger = logging.getLogger(__name__)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _warn_insecure(what: str) -> None:
    err_console.print(
        f"[bold yellow]warning:[/] {what} without TLS (--insecure): messages, model weights and "
        "credentials travel unencrypted. Use only on a trusted network for testing."
    )


def _is_loopback(address: str) -> bool:
    from fedseg.runtime.flower.superlink import is_loopback

    return is_loopback(address.rsplit(":", 1)[0].strip("[]"))


def run_flower_engine(cfg: Any, run_dir: Path, *, engine: str, resume: bool, command: str | None) -> dict[str, Any]:
    """``fedseg run --engine flower-sim [--resume]``: run ``cfg`` in Flower's simulation runtime;
    the summary.

    Raises:
        fedseg.runtime.common.RunError: engine ``flower`` (a deployment is submitted with
            ``flwr run``), or anything the run refuses (e.g. ``--resume`` without a checkpoint).
        fedseg.data.base.DataError: the data check failed (before the simulation starts).
    """
    from fedseg.cli.progress import RichProgress
    from fedseg.runtime.common import RunError

    if engine == "flower":
        raise RunError(
            "engine 'flower' is a deployment: start a SuperLink and SuperNodes and submit with `flwr run` "
            "(docs/deployment.md); use --engine flower-sim to simulate"
        )
    from fedseg.runtime.flower.simulation import run_flower_simulation

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("flwr").setLevel(logging.WARNING)
    result = run_flower_simulation(cfg.model_copy(update={"engine": "flower-sim"}), run_dir, resume=resume,
                                   command=command, progress=RichProgress())
    return result.summary


@app.command()
def certs(
    out_dir: Annotated[Path, typer.Argument(help="folder for ca.crt, ca.key, server.pem, server.key and keys")],
    host: Annotated[list[str], typer.Option(
        "--host", help="a DNS name or IP under which the sites reach the SuperLink (repeat for each; "
                       "localhost and 127.0.0.1 are always added)")],
    supernode: Annotated[
        list[str] | None, typer.Option("--supernode", help="make a SuperNode auth key pair with this name (repeat)")
    ] = None,
    days: Annotated[int, typer.Option(help="validity of the certificates in days")] = 365,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace existing files")] = False,
    app_signing_key: Annotated[bool, typer.Option(
        "--app-signing-key/--no-app-signing-key", help="also make the operator's app signing key pair")] = True,
) -> None:
    """Make a CA, the SuperLink's TLS certificate for --host names, SuperNode key pairs and the app signing key."""
    from fedseg.runtime.flower.certs import (
        CertificateError,
        make_app_signing_key,
        make_certificates,
        make_supernode_keys,
    )

    try:
        files = make_certificates(out_dir, host, days=days, overwrite=overwrite)
        keys = make_supernode_keys(out_dir, supernode or [], overwrite=overwrite)
        signing = make_app_signing_key(out_dir, overwrite=overwrite) if app_signing_key else None
    except CertificateError as exc:
        _fail(str(exc))
        return
    console.print(f"CA certificate (give to every SuperNode and flwr user): {files.ca_cert}")
    console.print(f"SuperLink certificate + key (stay on the SuperLink): {files.server_cert}, {files.server_key}")
    console.print(f"SuperLink certificate valid for: {', '.join(files.hosts)} (the SuperNodes and flwr must "
                  "use one of these names)")
    console.print(f"CA key (keep offline): {files.ca_key}")
    for name, (private, public) in keys.items():
        console.print(f"SuperNode {name}: private key {private} (stays on the site), public key {public} (register)")
    if signing is not None:
        console.print(f"app signing key (stays with the operator, `fedseg flower app --sign-key`): {signing[0]}; "
                      f"its public key (every site, `fedseg flower clientapp --trusted-app-key`): {signing[1]}")


@app.command()
def connection(
    name: Annotated[str, typer.Argument(help="connection name, used as `flwr run APP NAME`")],
    address: Annotated[str, typer.Argument(help="the SuperLink as host:port")],
    root_certificates: Annotated[
        Path | None, typer.Option("--root-certificates", help="CA certificate (ca.crt) of the SuperLink")
    ] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="plain HTTP (a SuperLink started --insecure)")] = False,
    default: Annotated[bool, typer.Option("--default/--no-default", help="make it flwr's default")] = True,
) -> None:
    """Add a SuperLink connection to $FLWR_HOME/config.toml (TLS unless --insecure)."""
    from fedseg.runtime.flower.project import write_connection

    if insecure and root_certificates is not None:
        _fail("give --root-certificates (TLS) or --insecure, not both")
    if not insecure and root_certificates is None:
        _fail("TLS needs --root-certificates CA_FILE (made by `fedseg flower certs`); --insecure only for tests")
    if root_certificates is not None and not root_certificates.is_file():
        _fail(f"--root-certificates {root_certificates}: no such file")
    if insecure:
        _warn_insecure(f"connection {name!r} to {address}")
    path = write_connection(name, address, root_certificates=root_certificates, insecure=insecure, default=default)
    console.print(f"connection {name!r} -> {address} written to {path}")


@app.command("app")
def app_dir(
    out_dir: Annotated[Path, typer.Argument(help="the Flower app directory to write (pyproject.toml)")],
    config: Annotated[Path, typer.Argument(help="fedseg YAML run configuration")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="run directory on the SuperLink machine")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. federation.rounds=5")] = None,
    sign_key: Annotated[Path | None, typer.Option(
        "--sign-key", help="the operator's app signing key (app-signing.key): sign the configuration")] = None,
    plan_only: Annotated[bool, typer.Option(
        "--plan-only", help="the ServerApp runs only the planning round: RUN_DIR/plans.yaml (docs/planning.md)")
    ] = False,
    plans: Annotated[Path | None, typer.Option(
        "--plans", help="plans.yaml of `fedseg plan` (config and --set override it key by key)")] = None,
) -> None:
    """Write the Flower app that `flwr run` submits: fedseg's ServerApp/ClientApp + this config."""
    from fedseg.algorithms import AlgorithmConfigError
    from fedseg.config import ConfigError, load_config
    from fedseg.planning import PlanError, load_planned_config
    from fedseg.registry import UnknownNameError
    from fedseg.runtime.common import RunError
    from fedseg.runtime.flower.project import write_app
    from fedseg.runtime.flower.server_app import check_flower_config

    if plan_only and plans is not None:
        _fail("give --plan-only (write an app that plans) or --plans (an app that trains under a plan), not both")
    try:
        cfg = load_config(config, set_ or []) if plans is None else load_planned_config(config, plans, set_ or [])
        if not plan_only:
            check_flower_config(cfg)
        elif cfg.data.source != "folder":
            raise PlanError(f"--plan-only: data.source {cfg.data.source!r}; planning reads real cases (data.source "
                            "'folder')")
    except (ConfigError, AlgorithmConfigError, UnknownNameError, RunError, PlanError) as exc:
        _fail(str(exc))
        return
    sets = " ".join(f"--set {s}" for s in set_ or [])
    extra = " --plan-only" if plan_only else (f" --plans {plans}" if plans is not None else "")
    command = f"flwr run {out_dir}  # fedseg flower app {out_dir} {config} --run-dir {run_dir}{extra} {sets}".rstrip()
    try:
        path = write_app(out_dir, cfg, run_dir, command=command, sign_key=sign_key, plan_only=plan_only)
    except ValueError as exc:
        _fail(f"--sign-key: {exc}")
        return
    signed = "signed" if sign_key is not None else "unsigned: sites with --trusted-app-key refuse it"
    what = "plans into RUN_DIR/plans.yaml" if plan_only else "trains"
    console.print(f"Flower app: {path} ({signed}; {what}; run directory on the SuperLink machine: {run_dir})")


@app.command()
def clientapp(
    runtime_api_address: Annotated[
        str, typer.Option("--runtime-api-address", help="the SuperNode's Runtime API (flower-supernode --port)")
    ] = "127.0.0.1:9094",
    root_certificates: Annotated[
        Path | None, typer.Option("--root-certificates", help="CA of the Runtime API certificate (if it uses TLS)")
    ] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="plain HTTP to a non-loopback Runtime API")] = False,
    poll_interval: Annotated[float, typer.Option(help="seconds between task polls when idle")] = 0.05,
    trusted_app_key: Annotated[list[Path] | None, typer.Option(
        "--trusted-app-key", help="the operator's app-signing.pub: run only apps it signed (repeat for several)")
    ] = None,
) -> None:
    """Serve a SuperNode's ClientApp tasks in one long-lived process (SuperNode --isolation process)."""
    from fedseg.runtime.flower.simulation import apply_env_defaults
    from fedseg.runtime.flower.trust import load_trusted_keys
    from fedseg.runtime.flower.worker import WorkerError, serve_clientapps

    try:
        trusted = load_trusted_keys(trusted_app_key or [])
    except ValueError as exc:
        _fail(f"--trusted-app-key: {exc}")
        return

    if insecure and root_certificates is not None:
        _fail("give --root-certificates or --insecure, not both")
    plain = root_certificates is None
    if plain and not _is_loopback(runtime_api_address):
        if not insecure:
            _fail(f"--runtime-api-address {runtime_api_address} is not on this machine: give --root-certificates "
                  "(the Runtime API's CA) or --insecure")
        _warn_insecure(f"the Runtime API at {runtime_api_address}")
    if poll_interval <= 0:
        _fail(f"--poll-interval must be > 0, got {poll_interval}")
    apply_env_defaults()
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("fedseg").setLevel(logging.INFO)
    try:
        done = serve_clientapps(runtime_api_address, insecure=plain, root_certificates=root_certificates,
                                poll_interval=poll_interval, trusted_keys=trusted)
    except WorkerError as exc:
        _fail(str(exc))
        return
    console.print(f"stopped after {done} ClientApp tasks")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def supernode(
    ctx: typer.Context,
    idle_poll: Annotated[float, typer.Option("--idle-poll", help="cap of the SuperNode's polling sleeps (s)")] = 0.2,
    rejoin_wait: Annotated[float, typer.Option(
        "--rejoin-wait", help="after a restart, retry activation this long while the SuperLink still sees the node "
                              "online (s)")] = 90.0,
    heartbeat_interval: Annotated[float | None, typer.Option(
        "--heartbeat-interval", help="seconds between heartbeats (Flower: 30, min 10)")] = None,
) -> None:
    """Flower's SuperNode (every flower-supernode option passes through) with shorter polling sleeps."""
    from fedseg.runtime.flower.simulation import apply_env_defaults
    from fedseg.runtime.flower.supernode import run_supernode

    if idle_poll <= 0:
        _fail(f"--idle-poll must be > 0, got {idle_poll}")
    if rejoin_wait < 0:
        _fail(f"--rejoin-wait must be >= 0, got {rejoin_wait}")
    if heartbeat_interval is not None and heartbeat_interval < 10:
        _fail(f"--heartbeat-interval must be >= 10 (Flower's minimum), got {heartbeat_interval}")
    if "--insecure" in ctx.args:
        _warn_insecure("this SuperNode's connection to the SuperLink")
    apply_env_defaults()
    run_supernode(list(ctx.args), idle_poll=idle_poll, rejoin_wait=rejoin_wait, heartbeat_interval=heartbeat_interval)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def superlink(
    ctx: typer.Context,
    fleet_address: Annotated[str, typer.Option(
        "--fleet-address", help="HOST:PORT the sites reach (e.g. 0.0.0.0:9093): the Fleet API only")],
) -> None:
    """Flower's SuperLink (every flower-superlink option passes through; its --host/--port must be loopback:
    the operator's Control API) that also serves the Fleet API, and only it, on --fleet-address."""
    from fedseg.runtime.flower.simulation import apply_env_defaults
    from fedseg.runtime.flower.superlink import parse_address, run_superlink

    try:
        parse_address(fleet_address, what="--fleet-address")
    except ValueError as exc:
        _fail(str(exc))
    if "--insecure" in ctx.args:
        _warn_insecure("this SuperLink")
    apply_env_defaults()
    run_superlink(list(ctx.args), fleet_address=fleet_address)
