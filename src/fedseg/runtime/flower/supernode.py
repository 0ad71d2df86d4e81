"""``fedseg flower supernode``: Flower's own SuperNode with shorter polling waits (optional).

Flower 1.42's SuperNode loop (``flwr.supernode.start_client_internal``) sleeps a hard-coded 3 s
whenever it polls the SuperLink and finds no message, and 0.5 s between checks for the ClientApp's
reply. A round trip of the fedseg ServerApp (broadcast -> train -> reply) therefore waits about 2-3
s in these sleeps, per message, on top of the actual work. This launcher runs the unmodified
``flower-supernode`` entry point with every argument passed through, after capping the sleeps of
that one module at ``idle_poll`` seconds. Nothing else changes: same Fleet API, TLS,
authentication and node config; the cost is one more PullMessages request to the SuperLink per
``idle_poll`` seconds while idle.

Two more knobs for restarts (a site's machine or process killed and started again):

* ``rejoin_wait``: the SuperLink activates a node id only once it is offline, i.e. when the
  killed process's heartbeats have lapsed (2 x the heartbeat interval). Flower's SuperNode exits
  with code 305 when activation fails; this one retries a refused activation for up to
  ``rejoin_wait`` seconds, so a SuperNode restarted with the same key rejoins. The SuperLink
  answers an unregistered key with the same error (``FLEET_NODE_ACTIVATION_FAILED``, details
  withheld), so such a SuperNode also retries, then exits with 305 as before.
* ``heartbeat_interval``: seconds between the SuperNode's heartbeats (Flower: 30, at least 10);
  shorter makes the SuperLink declare a dead node unavailable sooner (2 x the interval) and lets
  a restarted one back in sooner, for one more small request per interval.
"""

from __future__ import annotations

import logging
import sys
import time
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["run_supernode", "PollingTime", "patient_activation"]

logger = logging.getLogger(__name__)

_ACTIVATION_FAILED = 2004
"""Flower's ``ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED``: the node id is still online (a previous
process's heartbeats), or the key is not registered."""


class PollingTime(types.ModuleType):
    """A stand-in for the ``time`` module whose ``sleep`` waits at most ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def patient_activation(activate: Any, rejoin_wait: float, *, pause: float = 2.0) -> Any:
    """Wrap ``FleetHttpClient.ActivateNode``: retry a refused activation (Flower's error code
    2004) for up to ``rejoin_wait`` seconds; any other error is raised at once."""
    import httpx
    from flwr.supercore.error import FlowerError

    def activate_when_offline(self: Any, request: Any) -> Any:
        deadline = time.monotonic() + rejoin_wait
        while True:
            try:
                return activate(self, request)
            except httpx.HTTPStatusError as exc:
                error = FlowerError.from_json(exc.response.text)
                if error is None or error.code != _ACTIVATION_FAILED or time.monotonic() > deadline:
                    raise
                logger.warning("the SuperLink refused to activate this node: still online after a restart (a "
                               "previous process's heartbeats) or its key is not registered; retrying for up to "
                               "%.0f s more", deadline - time.monotonic())
                time.sleep(pause)

    return activate_when_offline


def run_supernode(args: Sequence[str], *, idle_poll: float, rejoin_wait: float = 90.0,
                  heartbeat_interval: float | None = None) -> None:
    """Run ``flower-supernode ARGS`` in this process with its polling sleeps capped at ``idle_poll``,
    activation retried for ``rejoin_wait`` seconds and, if given, heartbeats every
    ``heartbeat_interval`` seconds.

    Raises:
        ValueError: ``idle_poll`` is not positive, ``rejoin_wait`` negative, ``heartbeat_interval`` below 10.
    """
    if idle_poll <= 0:
        raise ValueError(f"idle_poll must be > 0 seconds, got {idle_poll}")
    if rejoin_wait < 0:
        raise ValueError(f"rejoin_wait must be >= 0 seconds, got {rejoin_wait}")
    if heartbeat_interval is not None and heartbeat_interval < 10:
        raise ValueError(f"heartbeat_interval must be >= 10 seconds (Flower's minimum), got {heartbeat_interval}")
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as connection
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode
    from flwr.supernode.fleet_http_client import FleetHttpClient

    setattr(loop, "time", PollingTime(idle_poll))
    setattr(FleetHttpClient, "ActivateNode", patient_activation(FleetHttpClient.ActivateNode, rejoin_wait))
    if heartbeat_interval is not None:
        for module in (connection, heartbeat):
            setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", heartbeat_interval)
    sys.argv = ["flower-supernode", *args]
    flower_supernode()
