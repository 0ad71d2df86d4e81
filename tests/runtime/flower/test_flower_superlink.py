"""``fedseg flower superlink``: the sites' port answers only the Fleet API (the ASGI gate alone;
the whole SuperLink is exercised by test_flower_docs.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fedseg.runtime.flower.superlink import FleetOnlyGate, parse_address


def _call(gate: FleetOnlyGate, path: str, server: tuple[str, int] | None) -> tuple[int | None, list[str]]:
    reached: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    gate.app = app
    asyncio.run(gate({"type": "http", "method": "POST", "path": path, "server": server, "client": ("10.0.0.9", 5)},
                     receive, send))
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    return status, reached


@pytest.mark.parametrize("path", ["/v1/control/start-run", "/v1/control/register-node", "/v1/runtime/acquire-task",
                                  "/v1/runtime/pull-messages", "/docs", "/openapi.json", "/v1/fleetx"])
def test_the_fleet_port_refuses_everything_but_the_fleet_api(path: str) -> None:
    gate = FleetOnlyGate(None, public_port=9093)  # type: ignore[arg-type]
    assert _call(gate, path, ("0.0.0.0", 9093)) == (403, [])
    assert _call(gate, path, None) == (403, [])  # unknown listener: treated as public
    assert _call(gate, path, ("127.0.0.1", 9095)) == (None, [path])  # the operator's loopback port: served


@pytest.mark.parametrize("path", ["/v1/fleet/pull-messages", "/v1/fleet/activate-node", "/health"])
def test_the_fleet_api_is_served_on_the_fleet_port(path: str) -> None:
    gate = FleetOnlyGate(None, public_port=9093)  # type: ignore[arg-type]
    assert _call(gate, path, ("0.0.0.0", 9093)) == (None, [path])


def test_addresses_are_checked() -> None:
    assert parse_address("0.0.0.0:9093", what="x") == ("0.0.0.0", 9093)
    assert parse_address("[::]:9093", what="x") == ("::", 9093)
    for bad in ("9093", "host:", "host:0", "host:70000", ":9093"):
        with pytest.raises(ValueError, match="--fleet-address"):
            parse_address(bad, what="--fleet-address")
