"""``fedseg flower supernode``: Flower's SuperNode loop with its polling sleeps capped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedseg.runtime.flower.supernode import PollingTime, run_supernode


def test_polling_time_caps_sleeps_and_delegates_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    fake = PollingTime(0.2)
    fake.sleep(3)
    fake.sleep(0.05)
    assert slept == [0.2, 0.05]
    assert fake.monotonic is time.monotonic


def test_the_flower_supernode_loop_still_uses_the_time_module() -> None:
    """The patch targets ``time`` in Flower's SuperNode loop module; fail loudly if Flower moves it."""
    import flwr.supernode.start_client_internal as loop

    assert loop.time is time
    assert "time.sleep(3)" in Path(loop.__file__).read_text()


def test_idle_poll_must_be_positive() -> None:
    with pytest.raises(ValueError, match="idle_poll must be > 0"):
        run_supernode([], idle_poll=0)


def _refusal(text: str) -> Exception:
    import httpx

    request = httpx.Request("POST", "https://superlink/v1/fleet/activate-node")
    return httpx.HTTPStatusError("refused", request=request, response=httpx.Response(500, text=text, request=request))


def test_activation_is_retried_while_the_superlink_still_sees_the_node_online() -> None:
    """A SuperNode restarted with the same key is refused until its old heartbeats lapse: retry."""
    from fedseg.runtime.flower.supernode import patient_activation

    calls: list[object] = []

    def activate(self: object, request: object) -> str:
        calls.append(request)
        if len(calls) < 3:
            raise _refusal('{"code": 2004, "detail": "Failed to activate SuperNode."}')
        return "node 7"

    assert patient_activation(activate, 10, pause=0.01)(None, "req") == "node 7" and len(calls) == 3
    calls.clear()
    with pytest.raises(Exception, match="refused"):  # gave up after rejoin_wait
        patient_activation(activate, 0, pause=0.01)(None, "req")


def test_other_refusals_fail_at_once() -> None:
    from fedseg.runtime.flower.supernode import patient_activation

    calls: list[object] = []

    def activate(self: object, request: object) -> str:
        calls.append(request)
        raise _refusal('{"code": 2001, "detail": "SuperNode authentication is enabled."}')

    with pytest.raises(Exception, match="refused"):
        patient_activation(activate, 60, pause=0.01)(None, "req")
    assert len(calls) == 1


def test_the_patched_flower_names_still_exist() -> None:
    """The launcher patches these names; fail loudly if Flower moves them."""
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as connection
    from flwr.supernode.fleet_http_client import FleetHttpClient

    assert connection.HEARTBEAT_DEFAULT_INTERVAL == heartbeat.HEARTBEAT_DEFAULT_INTERVAL == 30
    assert callable(FleetHttpClient.ActivateNode)
    with pytest.raises(ValueError, match="heartbeat_interval must be >= 10"):
        run_supernode([], idle_poll=0.2, heartbeat_interval=5)
