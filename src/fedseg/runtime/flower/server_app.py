"""The fedseg Flower ServerApp: :class:`~fedseg.engine.server.FederationServer` over Flower's Grid.

The ServerApp holds no site data. It asks every SuperNode which site it serves (and the shape of
its data, which fixes the model, and its package versions: :mod:`~fedseg.runtime.flower.handshake`), builds the seeded initial model, then runs the same
FederationServer as the in-process engine with a :class:`FlowerExecutor` as transport: sampling,
the algorithm's broadcast and aggregation, evaluation rounds, metrics.jsonl, atomic checkpoints,
summary.json and the report all land in the run directory exactly as for an in-process run.
With the run config ``fedseg-plan-only = true`` it runs only the planning round instead
(:func:`~fedseg.runtime.flower.plan_round.run_plan_server`, docs/planning.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedseg.algorithms import Algorithm, build_algorithm
from fedseg.codecs import check_codec_config
from fedseg.config import RunConfig
from fedseg.engine.dpsgd import check_sample_dp
from fedseg.engine.failures import QuorumError
from fedseg.engine.privacy import check_client_dp
from fedseg.engine.progress import ProgressSink
from fedseg.engine.rundir import RunDir
from fedseg.io.packages import package_versions
from fedseg.runtime.build import build_federation, check_engine
from fedseg.runtime.model_init import check_model_outputs
from fedseg.runtime.common import DataSpec, RunError, prepare_run_dir
from fedseg.runtime.flower.client_app import load_run_config
from fedseg.runtime.flower.executor import RECEIVED_KEYS_FILE, FlowerExecutor, FlowerRunError, discover_sites
from fedseg.runtime.flower.handshake import check_versions
from fedseg.runtime.flower.keys import RunKey
from fedseg.runtime.flower.plan_round import is_plan_only, run_plan_server
from fedseg.types import Params

__all__ = ["app", "make_server_app", "run_server", "ServerResult", "expected_sites", "check_flower_config",
           "check_resumable"]

logger = logging.getLogger(__name__)


@dataclass
class ServerResult:
    """What a finished ServerApp leaves behind (the simulation returns it to the caller)."""

    run_dir: Path
    global_params: Params
    summary: dict[str, Any]


def expected_sites(cfg: RunConfig) -> list[str] | None:
    """The site names a deployment waits for: ``flower.sites``, else ``data.sites``, else the
    synthetic generator's ``site0..site{N-1}``; None when only the SuperNodes can tell."""
    if cfg.flower.sites:
        return list(cfg.flower.sites)
    if cfg.data.sites:
        return list(cfg.data.sites)
    if cfg.data.source == "synthetic":
        return [f"site{i}" for i in range(cfg.data.synthetic.num_sites)]
    return None


def check_flower_config(cfg: RunConfig) -> Algorithm:
    """Refuse what the Flower engines cannot run, before anything starts; the checked algorithm.

    Raises:
        RunError: the centralised reference (pooled data has no place in a federation).
        fedseg.config.ConfigError: ``privacy.client`` with what it cannot protect (``check_client_dp``).
        fedseg.algorithms.AlgorithmConfigError: bad algorithm hyperparameters.
        fedseg.config.ConfigError: a bad codec chain, or ``privacy.sample`` with what DP-SGD cannot train.
    """
    algorithm = build_algorithm(cfg.algorithm)
    check_engine(algorithm, "flower")
    check_codec_config(cfg.codec)  # codec chains, before any site is waited for or data loaded
    check_client_dp(cfg, algorithm)
    check_model_outputs(cfg, algorithm)  # e.g. FedBCS's prototype levels on a plain U-Net
    check_sample_dp(cfg, algorithm)  # DP-SGD refuses some algorithms and BatchNorm, before any site is waited for
    return algorithm


def check_resumable(run: RunDir) -> None:
    """Refuse to resume a Flower run whose checkpoint holds no client states.

    Raises:
        RunError: no checkpoint, or one without client states (a deployed run keeps them on its
            SuperNodes): resuming would silently reset every personal layer and client state.
    """
    if not run.checkpoint.is_file():
        raise RunError(f"--resume: no checkpoint at {run.checkpoint}; start the run without --resume")
    from fedseg.io.safe import load_checkpoint  # weights_only: a checkpoint never runs code

    ckpt = load_checkpoint(run.checkpoint, what="--resume")
    if ckpt.get("client_states") is None:
        raise RunError(
            f"--resume: the checkpoint {run.checkpoint} holds no client states (a deployed Flower run keeps them "
            "on its SuperNodes); resuming would reset every client's state. Start a new run with another --out"
        )


def run_server(
    grid: Grid,
    run_config: Mapping[str, Any],
    *,
    engine: str,
    expected_nodes: int | None = None,
    progress: ProgressSink | None = None,
    write_report: bool = True,
    resume: bool = False,
    state_dir: Path | None = None,
) -> ServerResult:
    """Run (or, in simulation, resume) a whole federation from inside a ServerApp.

    Args:
        grid: the ServerApp's grid.
        run_config: the Flower run config (``fedseg-config``, ``run-dir``, ``command``).
        engine: recorded in config.yaml and run_info.json (``flower-sim`` or ``flower``).
        expected_nodes: simulation: the number of SuperNodes (one per site).
        resume: continue from the run directory's checkpoint (:func:`check_resumable`).
        state_dir: simulation: the folder where the ClientApps write their state after every round
            (:class:`~fedseg.runtime.flower.executor.FlowerExecutor`); the checkpoint refers to it.
    """
    cfg = load_run_config(run_config).model_copy(update={"engine": engine})
    algorithm = check_flower_config(cfg)  # before waiting for any site
    run_dir_value = run_config.get(RunKey.RUN_DIR.value)
    if not isinstance(run_dir_value, str) or not run_dir_value:
        raise RunError(f"the Flower run config has no {RunKey.RUN_DIR.value!r}; got keys {sorted(run_config)}")
    run_dir = Path(run_dir_value).expanduser()
    command = run_config.get(RunKey.COMMAND.value)
    run = prepare_run_dir(cfg, run_dir, resume=resume, command=str(command) if command else None)
    try:  # the run directory is this process's until the run ends (RunDir.lock)
        if resume:
            check_resumable(run)
        sites = discover_sites(grid, cfg.flower, expected=expected_sites(cfg) if expected_nodes is None else None,
                               expected_nodes=expected_nodes)
        # the version handshake: a site on other versions is refused before any model is built
        check_versions({s: i.versions for s, i in sites.items()}, package_versions(), cfg.flower.version_policy)
        specs = {info.spec for info in sites.values()}
        if len(specs) != 1:
            raise FlowerRunError(
                "the sites disagree on the data: "
                + "; ".join(f"{s}: {i.spec}" for s, i in sorted(sites.items()))
                + ". Every site needs the same dimensionality, channels and classes"
            )
        spec: DataSpec = specs.pop()
        order = sorted(sites.values(), key=lambda i: (i.order < 0, i.order, _position(cfg, i.site), i.site))
        names = [info.site for info in order]
        indices = {name: i for i, name in enumerate(names)}
        federation = build_federation(
            cfg, spec, torch.device("cpu"), engine=engine, sites=names, run=run, resume=resume, progress=progress,
            device_label="cpu (server)", algorithm=algorithm,
            # what the sites reported of their splits: sizes and the SHA-256 of each split's case ids
            # (the ids stay on the sites; a simulation also writes splits.json)
            info={"flower": {s: {"node_id": i.node_id, "train_val_test": list(i.sizes),
                                 "split_sha256": dict(zip(("train", "val", "test"), i.split_sha256, strict=False)),
                                 "versions": dict(i.versions)}
                             for s, i in sites.items()}},
        )
        model, server = federation.model, federation.server
        server.declared_sizes = {s: int(i.sizes[0]) for s, i in sites.items()}  # update screening checks n_k against it
        # client-level DP (privacy.client) runs inside ClientRuntime and FederationServer, as in-process
        executor = FlowerExecutor(grid, sites, indices, cfg.flower, local_keys=algorithm.local_keys(model),
                                  audit_path=run.root / RECEIVED_KEYS_FILE, state_dir=state_dir,
                                  round_timeout=cfg.federation.round_timeout)
        logger.info("fedseg ServerApp: %s on %s, run directory %s", algorithm.name, ", ".join(names), run_dir)
        try:
            summary = server.run_all(executor, resume=resume)
        except QuorumError as exc:  # a round short of its quorum after the retries: a message, not a traceback
            raise FlowerRunError(str(exc)) from None
        if write_report:
            from fedseg.io.packages import MissingExtraError
            from fedseg.report import write_report as _write_report

            try:
                _write_report(run_dir)
            except MissingExtraError as exc:  # a server installed without [report]: the run itself is complete
                logger.warning("no report written: %s; later: fedseg report %s", exc, run_dir)
        return ServerResult(run_dir=run_dir, global_params=server.global_params, summary=summary)
    finally:
        run.unlock()


def _position(cfg: RunConfig, site: str) -> int:
    listed = expected_sites(cfg) or []
    return listed.index(site) if site in listed else len(listed)


def make_server_app(
    defaults: Mapping[str, Any] | None = None,
    *,
    engine: str = "flower",
    expected_nodes: int | None = None,
    progress: ProgressSink | None = None,
    results: list[ServerResult] | None = None,
    resume: bool = False,
) -> ServerApp:
    """A fedseg ServerApp.

    Args:
        defaults: run-config values used where the Flower run config has none (the simulation
            passes the configuration this way; a deployment gets it from ``flwr run``).
            :attr:`RunKey.STATE_DIR` is read from here only (simulation).
        engine: ``flower`` (deployment) or ``flower-sim``.
        expected_nodes: simulation: the number of SuperNodes.
        progress: receives round events (the CLI's progress display in simulation).
        results: the :class:`ServerResult` is appended here (simulation: the caller's handle).
        resume: simulation: continue from the run directory's checkpoint.
    """
    base = dict(defaults or {})
    state_value = base.get(RunKey.STATE_DIR.value)
    state_dir = Path(str(state_value)) if state_value else None
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = {RunKey.COMMAND.value: f"flwr run  # Flower run {context.run_id}", **base, **context.run_config}
        if is_plan_only(run_config):  # `fedseg flower app --plan-only`: the planning round, no training
            run_plan_server(grid, run_config)
            return
        result = run_server(grid, run_config, engine=engine, expected_nodes=expected_nodes, progress=progress,
                            resume=resume, state_dir=state_dir)
        if results is not None:
            with _RESULTS_LOCK:
                results.append(result)

    return server_app


_RESULTS_LOCK = threading.Lock()

app = make_server_app()
"""The ServerApp a deployment names in ``[tool.flwr.app.components]``."""
