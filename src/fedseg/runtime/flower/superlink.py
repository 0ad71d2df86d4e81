"""``fedseg flower superlink``: Flower's own SuperLink whose public port serves only the Fleet API.

Flower 1.42's SuperLink serves every API on one HTTPS port: the Fleet API (SuperNodes), the
Control API (``flwr run``, ``flwr supernode register``: unauthenticated without Flower's
enterprise account plugins) and the Runtime API (the ServerApp's, and its SuperExec's task
queue). So whoever reaches that port and trusts ``ca.crt`` -- every hospital -- could register a
SuperNode key and submit runs. This launcher runs the unmodified ``flower-superlink`` entry point
with every argument passed through, but in place of Flower's single listener it serves

* Flower's ``--host``/``--port``, which must be a loopback address: every API, for the operator
  (``flwr`` on the server, or through an SSH tunnel) and the ServerApp;
* ``--fleet-address HOST:PORT`` (e.g. ``0.0.0.0:9093``): the port the sites reach, on which
  only ``/v1/fleet/*`` and ``/health`` are answered; every other path gets ``403``.

Both listeners share one SuperLink (one state, one TLS certificate). Which listener accepted a
connection is the local address of its socket (``scope["server"]``), which a client cannot forge.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
import types
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

__all__ = ["FleetOnlyGate", "run_superlink", "parse_address", "is_loopback", "FLEET_PATHS"]

logger = logging.getLogger(__name__)

FLEET_PATHS = ("/v1/fleet/", "/health")
"""Path prefixes the public (Fleet) listener answers."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def parse_address(address: str, *, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port).

    Raises:
        ValueError: no port, or a port outside 1..65535 (the message names ``what``).
    """
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {address!r}: give HOST:PORT, e.g. 0.0.0.0:9093")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address, no port) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FleetOnlyGate:
    """ASGI wrapper: a request accepted on port ``public_port`` reaches the app only for a Fleet path.

    Args:
        app: the SuperLink's ASGI app.
        public_port: the local port of the public (Fleet) listener.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], public_port: int) -> None:
        self.app = app
        self.public_port = public_port

    def admits(self, scope: Scope) -> bool:
        """Whether the request may reach the SuperLink (fail closed: an unknown listener is public)."""
        server = scope.get("server")
        on_public = server is None or int(server[1]) == self.public_port
        return not on_public or str(scope.get("path", "")).startswith(FLEET_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.admits(scope):
            client = scope.get("client")
            logger.warning("refused %s %s from %s on the Fleet port %d: only the Fleet API is served there",
                           scope.get("method", ""), scope.get("path", ""), client[0] if client else "?",
                           self.public_port)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = json.dumps({"detail": "forbidden: this SuperLink port serves only the Fleet API (SuperNodes); "
                                         "the Control API is reachable on the server only"}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.set_inheritable(True)
    return sock


def _uvicorn_stand_in(fleet_host: str, fleet_port: int) -> types.ModuleType:
    """A ``uvicorn`` module whose ``run`` serves the SuperLink on Flower's address and the Fleet address."""
    import uvicorn

    def run(app: Any, *, host: str, port: int, **kwargs: Any) -> None:
        if not is_loopback(host):
            raise SystemExit(f"fedseg flower superlink: --host {host} would expose the Control API; the operator "
                             "listener must be a loopback address (127.0.0.1); sites use --fleet-address")
        if port == fleet_port:
            raise SystemExit(f"fedseg flower superlink: --port {port} and --fleet-address use the same port")
        kwargs.pop("workers", None)
        kwargs.pop("reload", None)
        config = uvicorn.Config(FleetOnlyGate(app, fleet_port), host=host, port=port, **kwargs)
        logger.info("SuperLink: every API on %s:%d (operator, loopback); Fleet API only on %s:%d (sites)", host, port,
                    fleet_host, fleet_port)
        uvicorn.Server(config).run(sockets=[_listen(host, port), _listen(fleet_host, fleet_port)])

    stand_in = types.ModuleType("uvicorn")
    stand_in.__dict__.update({k: getattr(uvicorn, k) for k in dir(uvicorn) if not k.startswith("__")})
    setattr(stand_in, "run", run)
    return stand_in


def run_superlink(args: Sequence[str], *, fleet_address: str) -> None:
    """Run ``flower-superlink ARGS`` in this process, its Control and Runtime APIs on Flower's
    ``--host``/``--port`` (loopback) only and its Fleet API also on ``fleet_address``.

    Raises:
        ValueError: ``fleet_address`` is not ``HOST:PORT``.
    """
    fleet_host, fleet_port = parse_address(fleet_address, what="--fleet-address")
    import importlib

    # the package flwr.superlink.cli re-exports the function under the module's name: look the module up
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    setattr(cli, "uvicorn", _uvicorn_stand_in(fleet_host, fleet_port))
    sys.argv = ["flower-superlink", *args]
    cli.flower_superlink()
