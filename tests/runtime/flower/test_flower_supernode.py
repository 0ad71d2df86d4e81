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
