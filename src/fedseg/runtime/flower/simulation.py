"""``fedseg run --engine flower-sim``: the fedseg ServerApp and ClientApp in Flower's simulation
runtime (its Ray backend; one virtual SuperNode per site, ``partition-id`` = the site's index).

Before Ray starts, this process does what the in-process engine does before training
(:func:`fedseg.runtime.common.load_training_data`): the data is built and checked (a problem stops
the run with every file named) and ``splits.json`` is written. The ServerApp runs in a thread of
this process and writes the run directory; ClientApps run in Ray actors, which live for the whole
simulation, so each site's data and model are built once per actor (see
:mod:`fedseg.runtime.flower.client_app`). Each ClientApp also writes its state to the run's
``client_states/`` after every round, so a simulated run resumes (``--resume``) and its personal
models can be evaluated (``fedseg eval --client``) like an in-process run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from flwr.simulation import run_simulation  # imports no Ray: that happens when a simulation starts

from fedseg.config import RunConfig
from fedseg.engine.progress import ProgressSink
from fedseg.engine.trainer import resolve_device
from fedseg.io.packages import MissingExtraError, check_extra
from fedseg.runtime.model_init import init_model
from fedseg.runtime.common import DataSpec, RunError, config_text, load_training_data, prepare_run_dir
from fedseg.runtime.flower.client_app import make_client_app
from fedseg.runtime.flower.keys import ENV_DEFAULTS, RunKey
from fedseg.runtime.flower.server_app import ServerResult, check_flower_config, check_resumable, make_server_app

__all__ = ["run_flower_simulation", "apply_env_defaults"]

logger = logging.getLogger(__name__)


def apply_env_defaults() -> None:
    """Set fedseg's Flower environment defaults (no uv installs, no telemetry, no update check)
    where the user has not set them."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def run_flower_simulation(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    command: str | None = None,
    progress: ProgressSink | None = None,
    write_report: bool = True,
) -> ServerResult:
    """Run (or resume) a federation in Flower's simulation runtime and return the server's result.

    Args:
        cfg: the validated run configuration (``engine`` is recorded as ``flower-sim``).
        run_dir: the run directory. A fresh run refuses one that holds a checkpoint; ``resume``
            needs one written by a simulation (with client states) and the same configuration.
        command: the command line to record in ``command.txt``.

    Raises:
        RunError: Ray is not installed (the ``[sim]`` extra), the configuration cannot run on
            Flower (the centralised reference), the run directory does not fit the request, or the
            simulation ended without a result.
        fedseg.data.base.DataError: the data cannot be trained on (every problem listed); raised
            before the simulation starts.
    """
    try:  # Ray comes with the [sim] extra only: a hospital SuperNode installs none
        check_extra("ray", what="--engine flower-sim (Flower's simulation runtime)")
    except MissingExtraError as exc:
        raise RunError(str(exc)) from None

    cfg = cfg.model_copy(update={"engine": "flower-sim"})
    check_flower_config(cfg)
    run = prepare_run_dir(cfg, run_dir, resume=resume, command=command)
    try:  # the run directory is this process's until the run ends (RunDir.lock)
        if resume:
            check_resumable(run)
        data = load_training_data(cfg, run)  # every problem at once, before Ray starts; splits.json
        num_sites = len(data.sites)
        if cfg.model.init_checkpoint:  # refuse a bad file here too, not inside the Ray actors
            init_model(cfg, DataSpec.of(data), torch.device("cpu"))
        del data  # each ClientApp builds its own site
        apply_env_defaults()
        defaults: dict[str, Any] = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(run_dir),
                                    RunKey.STATE_DIR.value: str(run.client_states.resolve())}
        if command:
            defaults[RunKey.COMMAND.value] = command
        results: list[ServerResult] = []
        server_app = make_server_app(defaults, engine="flower-sim", expected_nodes=num_sites, progress=progress,
                                     results=results, resume=resume)
        client_app = make_client_app(defaults)
        on_gpu = resolve_device(cfg.train.device).type != "cpu"
        backend: dict[str, Any] = {
            "client_resources": {
                "num_cpus": cfg.flower.sim_cpus_per_client,
                # every site shares the visible GPU(s); Ray hides GPUs from actors that ask for none
                "num_gpus": min(1.0, 1.0 / num_sites) if on_gpu else 0.0,
            },
            "init_args": {"logging_level": logging.WARNING, "log_to_driver": False},
        }
        if cfg.flower.sim_num_cpus is not None:
            backend["init_args"]["num_cpus"] = cfg.flower.sim_num_cpus
        logger.info("Flower simulation: %d SuperNodes, run directory %s", num_sites, run_dir)
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_sites, backend_config=backend)
        if not results:
            raise RunError(f"the Flower simulation ended without a result; see the log above (run directory {run_dir})")
        return results[0]
    finally:
        run.unlock()
