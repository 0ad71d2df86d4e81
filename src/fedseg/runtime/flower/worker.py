"""``fedseg flower clientapp``: a long-lived ClientApp process for a SuperNode started with
``--isolation process``.

Flower 1.42 runs a ClientApp task per message: in ``subprocess`` isolation the SuperNode's
SuperExec starts ``flwr-clientapp --token ...`` for every message, and that process imports torch,
reads the site's data and builds the model again, then exits (20-40 s per round on 2 cores). With
``--isolation process`` the SuperNode leaves task execution to "a separate independent process";
this module is that process: it acquires the SuperNode's ClientApp tasks through Flower's Runtime
API and runs each with Flower's own task code (pull the task input, install the FAB, load the
ClientApp it names, push the reply and the updated context) -- in one process that stays alive,
so imports, data and model (cached by the fedseg ClientApp) are paid once.

The transport is untouched: messages still go SuperLink <-> SuperNode over Flower's Fleet API
(TLS), and the ClientApp talks to its SuperNode's Runtime API as ``flwr-clientapp`` would.

Before anything of a task's app is installed or loaded, the app must be fedseg's and, when the
site holds the operator's public key, signed by the operator (:mod:`fedseg.runtime.flower.trust`);
a refused task gets an error reply and nothing of it runs. A failing task, or a SuperNode that is
gone or restarting, is logged and the process keeps serving.

Note: the Runtime API client code used here is internal to Flower (checked against flwr 1.42);
:func:`serve_clientapps` fails with a clear message if it moves.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from fedseg.runtime.flower.trust import AppRefused, check_fab, check_signature

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["serve_clientapps", "WorkerError"]

logger = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """The Flower version installed lacks the Runtime API pieces this worker uses."""


def _flower() -> dict[str, Any]:
    """Flower's Runtime API client pieces (internal modules, checked against 1.42)."""
    try:
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output
    except ImportError as exc:  # pragma: no cover - only with another Flower version
        import flwr

        raise WorkerError(
            f"fedseg flower clientapp needs Flower's Runtime API client as in flwr 1.42; the installed flwr "
            f"{getattr(flwr, '__version__', '?')} lacks {exc.name!r}. Start the SuperNode with "
            "--isolation subprocess instead (slower: one process per message)"
        ) from exc
    return dict(locals())


def serve_clientapps(
    runtime_api_address: str,
    *,
    insecure: bool,
    root_certificates: Path | None = None,
    poll_interval: float = 0.05,
    max_tasks: int | None = None,
    stop: threading.Event | None = None,
    trusted_keys: Sequence[Ed25519PublicKey] = (),
) -> int:
    """Run the SuperNode's ClientApp tasks in this process until stopped (SIGTERM/SIGINT).

    Args:
        runtime_api_address: the SuperNode's Runtime API, ``host:port`` (``flower-supernode --port``).
        insecure: plain HTTP to the Runtime API (it listens on 127.0.0.1 by default).
        root_certificates: CA of the Runtime API's certificate when it serves TLS.
        poll_interval: seconds between task polls when idle.
        max_tasks: stop after this many tasks (tests); None: run until stopped.
        stop: an event that stops the loop (tests); SIGTERM and SIGINT set it too when this runs in
            the main thread.
        trusted_keys: the operator's app signing keys: run only apps whose configuration one of
            them signed; empty: any fedseg app (still never another app), with a warning.

    Returns:
        The number of tasks run.
    """
    fl = _flower()
    certificates = root_certificates.read_bytes() if root_certificates is not None else None
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    client = fl["RuntimeHttpClient"].from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[fl["RuntimeVersionHttpInterceptor"](component_name="SuperExec")],
        retry_invoker=fl["make_simple_http_retry_invoker"](),
    )
    installed: set[str] = set()
    load_app = fl["get_load_client_app_fn"](default_app_ref="", app_path=None, multi_app=True)
    request = fl["AcquireTaskRequest"](supported_task_types=[fl["TaskType"].CLIENT_APP.value])
    done = 0
    logger.info("fedseg ClientApp process serving the SuperNode at %s", runtime_api_address)
    if not trusted_keys:
        logger.warning("no --trusted-app-key: this site runs any fedseg app its SuperLink sends, signed or not")
    backoff = poll_interval
    try:
        while not stop.is_set() and (max_tasks is None or done < max_tasks):
            try:
                res = client.AcquireTask(request)
                if res.HasField("task") and res.token:
                    _run_task(fl, runtime_api_address, insecure, certificates, res.token, load_app, installed,
                              trusted_keys)
                    done += 1
                else:
                    stop.wait(poll_interval)
                backoff = poll_interval
            except Exception as exc:  # noqa: BLE001 - the SuperNode is gone or restarting: keep serving
                logger.warning("SuperNode Runtime API at %s: %s: %s; retrying in %.1f s", runtime_api_address,
                               type(exc).__name__, exc, backoff)
                stop.wait(backoff)
                backoff = min(5.0, backoff * 2 + 0.1)
    finally:
        client.close()
    return done


def _check_app(run: Any, fab: Any, run_config: Any, trusted_keys: Sequence[Ed25519PublicKey]) -> None:
    """Refuse a task whose app is not the operator's fedseg app (see :mod:`~fedseg.runtime.flower.trust`)."""
    check_fab(fab.content)
    if trusted_keys:
        check_signature(dict(run_config), trusted_keys)
    logger.debug("app %s %s (FAB %s) accepted", run.fab_id, run.fab_version, fab.hash_str[:12])


def _run_task(fl: dict[str, Any], address: str, insecure: bool, certificates: bytes | None, token: str,
              load_app: Any, installed: set[str], trusted_keys: Sequence[Ed25519PublicKey] = ()) -> None:
    """One ClientApp task, as ``flwr-clientapp`` runs it, without exiting afterwards."""
    retry = fl["make_simple_http_retry_invoker"]()
    client = fl["RuntimeHttpClient"].from_server_address(
        server_address=address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[fl["RuntimeVersionHttpInterceptor"](component_name="flwr-clientapp"),
                      fl["RuntimeTokenHttpInterceptor"](token)],
        retry_invoker=retry,
    )
    heartbeat = fl["HeartbeatSender"](fl["make_task_heartbeat_fn_http"](client))
    heartbeat.start()
    message = context = reply = None
    status, details = fl["SubStatus"].FAILED, "ClientApp task failed"
    start = time.perf_counter()
    try:
        message, context, run, fab = fl["pull_task_input"](client)
        pulled = time.perf_counter()
        _check_app(run, fab, context.run_config, trusted_keys)
        if fab.hash_str not in installed:
            fl["install_from_fab"](fab.content, skip_prompt=True)
            installed.add(fab.hash_str)
        client_app = load_app(run.fab_id, run.fab_version, fab.hash_str)
        loaded = time.perf_counter()
        reply = client_app(message=message, context=context)
        logger.debug("task input %.3f s, app %.3f s, ClientApp %.3f s", pulled - start, loaded - pulled,
                     time.perf_counter() - loaded)
        status, details = fl["SubStatus"].COMPLETED, ""
    except AppRefused as exc:  # nothing of the app was installed, loaded or run
        logger.error("refused a ClientApp task: %s", exc)
        details = f"{type(exc)}:<'refused by the site: {exc}'>"
        if message is not None:
            reply = fl["Message"](fl["Error"](code=fl["ErrorCode"].INVALID_FAB, reason=details), reply_to=message)
    except Exception as exc:  # the SuperLink gets an error reply, the process serves the next task
        logger.exception("ClientApp task failed")
        details = f"{type(exc)}:<'{exc}'>"
        if message is not None:
            reply = fl["Message"](fl["Error"](code=fl["ErrorCode"].CLIENT_APP_RAISED_EXCEPTION, reason=details),
                                  reply_to=message)
    finally:  # never raise from here: a SuperNode that died mid-task must not end this process
        try:
            if reply is not None and context is not None:
                fl["push_message"](client, reply, context)
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not deliver the ClientApp reply: %s: %s", type(exc).__name__, exc)
        try:
            retry.max_tries = 1
            fl["push_task_output"](client=client, context=context, sub_status=status, details=details)
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not report the task's end: %s: %s", type(exc).__name__, exc)
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
    logger.info("ClientApp task %s in %.2f s", status, time.perf_counter() - start)
