"""``fedseg flower supernode``: Flower's own SuperNode with shorter polling waits (optional).

Flower 1.41's SuperNode loop (``flwr.supernode.start_client_internal``) sleeps a hard-coded 3 s
whenever it polls the SuperLink and finds no message, and 0.5 s between checks for the ClientApp's
reply. A round trip of the fedseg ServerApp (broadcast -> train -> reply) therefore waits about 2-3
s in these sleeps, per message, on top of the actual work. This launcher runs the unmodified
``flower-supernode`` entry point with every argument passed through, after capping the sleeps of
that one module at ``idle_poll`` seconds. Nothing else changes: same Fleet API, TLS,
authentication and node config; the cost is one more PullMessages request to the SuperLink per
``idle_poll`` seconds while idle.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Sequence

__all__ = ["run_supernode", "PollingTime"]


class PollingTime(types.ModuleType):
    """A stand-in for the ``time`` module whose ``sleep`` waits at most ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def run_supernode(args: Sequence[str], *, idle_poll: float) -> None:
    """Run ``flower-supernode ARGS`` in this process with its polling sleeps capped at ``idle_poll``.

    Raises:
        ValueError: ``idle_poll`` is not positive.
    """
    if idle_poll <= 0:
        raise ValueError(f"idle_poll must be > 0 seconds, got {idle_poll}")
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    setattr(loop, "time", PollingTime(idle_poll))
    sys.argv = ["flower-supernode", *args]
    flower_supernode()
