"""The long-lived ClientApp process (worker) on scripted Flower pieces: a task whose ClientApp
raises, a SuperNode that vanishes while the reply is pushed, a Runtime API that fails between
tasks, and a refused app -- each is logged and the process keeps serving; a refused app is
never installed or loaded."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.cli.build import build_fab_from_disk

from conftest import tiny_config
from flower_testlib import write_foreign_app
from fedseg.config import config_from_dict
from fedseg.runtime.flower import worker
from fedseg.runtime.flower.project import write_app


class _Client:
    def __init__(self, script: list[str]) -> None:
        self.script = script

    def AcquireTask(self, request: Any) -> Any:  # noqa: N802 - Flower's name
        step = self.script.pop(0) if self.script else "idle"
        if step == "down":
            raise ConnectionError("connection refused")
        return SimpleNamespace(HasField=lambda name: step == "task", token="t" if step == "task" else "")

    def close(self) -> None:
        pass


def _fake_flower(fab: bytes, app: Any, events: list[str], *, push_fails: bool = False) -> dict[str, Any]:
    class Heartbeat:
        is_running = False

        def __init__(self, fn: Any) -> None:
            pass

        def start(self) -> None:
            self.is_running = True

        def stop(self) -> None:
            self.is_running = False

    def push_message(client: Any, reply: Any, context: Any) -> None:
        events.append("reply")
        if push_fails:
            raise ConnectionError("SuperNode gone")

    return {
        "RuntimeHttpClient": SimpleNamespace(from_server_address=lambda **kw: _Client(kw.pop("script", []))),
        "RuntimeVersionHttpInterceptor": lambda **kw: None, "RuntimeTokenHttpInterceptor": lambda token: None,
        "make_simple_http_retry_invoker": lambda: SimpleNamespace(max_tries=None),
        "HeartbeatSender": Heartbeat, "make_task_heartbeat_fn_http": lambda client: None,
        "pull_task_input": lambda client: ("msg", SimpleNamespace(run_config={}), SimpleNamespace(
            fab_id="x", fab_version="1"), SimpleNamespace(content=fab, hash_str="h" * 64)),
        "install_from_fab": lambda content, skip_prompt: events.append("install"),
        "push_message": push_message,
        "push_task_output": lambda **kw: events.append(f"status:{kw['sub_status']}"),
        "Message": lambda error, reply_to: SimpleNamespace(error=error), "Error": lambda code, reason: (code, reason),
        "ErrorCode": SimpleNamespace(CLIENT_APP_RAISED_EXCEPTION=2, INVALID_FAB=7),
        "SubStatus": SimpleNamespace(FAILED="failed", COMPLETED="completed"),
    }


def _raising_app(message: Any, context: Any) -> Any:
    raise RuntimeError("local training broke")


def test_a_raising_clientapp_or_a_vanished_supernode_never_escapes_a_task(tmp_path: Any,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    cfg = config_from_dict(tiny_config("fedavg"))
    fab = build_fab_from_disk(write_app(tmp_path / "app", cfg, tmp_path / "run").parent)  # fedseg's app
    events: list[str] = []
    fl = _fake_flower(fab, None, events, push_fails=True)
    with caplog.at_level(logging.WARNING, logger=worker.__name__):
        worker._run_task(fl, "127.0.0.1:1", True, None, "t", lambda *a: _raising_app, set())
    assert "status:failed" in events and "reply" in events
    assert "local training broke" in caplog.text and "could not deliver the ClientApp reply" in caplog.text


def test_a_foreign_app_is_refused_before_install(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    fab = build_fab_from_disk(write_foreign_app(tmp_path / "mole"))
    events: list[str] = []
    loaded: list[Any] = []
    with caplog.at_level(logging.ERROR, logger=worker.__name__):
        worker._run_task(_fake_flower(fab, None, events), "127.0.0.1:1", True, None, "t",
                         lambda *a: loaded.append(a), set())
    assert "install" not in events and not loaded
    assert events == ["reply", "status:failed"] and "refused a ClientApp task" in caplog.text


def test_the_serve_loop_outlives_a_supernode_that_goes_away(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    script = ["down", "down", "idle", "task", "idle"]
    ran: list[str] = []
    fl = _fake_flower(b"", None, [])
    fl["RuntimeHttpClient"] = SimpleNamespace(from_server_address=lambda **kw: _Client(script))
    fl["AcquireTaskRequest"] = lambda supported_task_types: None
    fl["TaskType"] = SimpleNamespace(CLIENT_APP=SimpleNamespace(value="clientapp"))
    fl["get_load_client_app_fn"] = lambda **kw: None
    monkeypatch.setattr(worker, "_flower", lambda: fl)
    monkeypatch.setattr(worker, "_run_task", lambda *a: ran.append("task"))
    with caplog.at_level(logging.WARNING, logger=worker.__name__):
        done = worker.serve_clientapps("127.0.0.1:1", insecure=True, poll_interval=0.01, max_tasks=1,
                                       stop=threading.Event())
    assert done == 1 and ran == ["task"]
    assert caplog.text.count("connection refused") == 2
