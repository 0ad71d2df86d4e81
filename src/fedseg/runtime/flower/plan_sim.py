"""``fedseg plan --engine flower-sim``: the planning round in Flower's simulation runtime.

As for ``fedseg run --engine flower-sim`` (:mod:`~fedseg.runtime.flower.simulation`): one virtual
SuperNode per site (``partition-id`` = the site's index in the data), fedseg's default ClientApp in
Ray actors, the server in a thread of this process. The sites are listed and their data checked
here first (:func:`fedseg.planning.cases.training_cases`), so a problem stops the command before Ray
starts; the server merges in that site order, so the plan and the plans file equal the in-process
``fedseg plan``'s.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation  # imports no Ray: that happens when a simulation starts

from fedseg.config import RunConfig
from fedseg.io.packages import MissingExtraError, check_extra
from fedseg.planning.cases import training_cases
from fedseg.planning.federated import PlanResult
from fedseg.planning.fingerprint import PlanError
from fedseg.runtime.common import RunError, config_text
from fedseg.runtime.flower.client_app import make_client_app
from fedseg.runtime.flower.keys import RunKey
from fedseg.runtime.flower.plan_round import request_plan
from fedseg.runtime.flower.simulation import apply_env_defaults

__all__ = ["plan_flower_simulation"]

logger = logging.getLogger(__name__)


def plan_flower_simulation(cfg: RunConfig, source: str) -> PlanResult:
    """Run the planning round on a simulated federation of ``cfg``'s sites; the server's result.

    Args:
        source: the plans file's ``source`` (sent to the sites with the plan).

    Raises:
        RunError: Ray is not installed (the ``[sim]`` extra), or the simulation ended without a plan.
        PlanError: the data cannot be planned from, or a site failed (names it).
    """
    try:  # Ray comes with the [sim] extra only
        check_extra("ray", what="--engine flower-sim (Flower's simulation runtime)")
    except MissingExtraError as exc:
        raise RunError(str(exc)) from None
    sites = list(training_cases(cfg.data, cfg.seed))  # the data check, before Ray starts
    apply_env_defaults()
    results: list[PlanResult] = []
    errors: list[PlanError] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            results.append(request_plan(grid, cfg, source, expected_nodes=len(sites), order=sites))
        except PlanError as exc:  # raised again below, not only logged by Flower
            errors.append(exc)

    client_app = make_client_app({RunKey.CONFIG.value: config_text(cfg)})
    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": cfg.flower.sim_cpus_per_client, "num_gpus": 0.0},  # planning reads files
        "init_args": {"logging_level": logging.WARNING, "log_to_driver": False},
    }
    if cfg.flower.sim_num_cpus is not None:
        backend["init_args"]["num_cpus"] = cfg.flower.sim_num_cpus
    logger.info("Flower simulation: planning round on %d SuperNodes (%s)", len(sites), ", ".join(sites))
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(sites), backend_config=backend)
    if errors:
        raise errors[0]
    if not results:
        raise RunError("the Flower simulation ended without a plan; see the log above")
    return results[0]
