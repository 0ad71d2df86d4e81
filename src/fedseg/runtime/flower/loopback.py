"""A whole Flower deployment on 127.0.0.1, for tests and benchmarks: a SuperLink with TLS, one
SuperNode (+ its long-lived ClientApp process) per site, ``flwr run``.

Every process is started in its own session and stopped by its PID (its process group: Flower's
SuperLink and SuperNode start helper processes) when the :class:`LoopbackFederation` closes, even
after an error; every wait has a timeout; ports are picked free on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fedseg.runtime.flower.keys import ENV_DEFAULTS

__all__ = ["LoopbackFederation", "LoopbackError", "free_port", "wait_for_port", "bin_path"]

HOST = "127.0.0.1"


class LoopbackError(RuntimeError):
    """A process did not start or a command failed; the message includes its log tail."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, *, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections (or ``proc`` exits, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LoopbackError(f"process {proc.pid} exited ({proc.returncode}) before port {port} opened")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise LoopbackError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


def bin_path(name: str) -> str:
    """An executable of this Python environment (``flwr``, ``flower-superlink``, ``fedseg``...)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class LoopbackFederation:
    """Start and stop Flower processes on 127.0.0.1 in ``workdir`` (logs go to ``workdir/logs``).

    Args:
        workdir: working directory of every process; ``FLWR_HOME`` is ``workdir/flwr_home``.
        env: extra environment for every process.
    """

    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    procs: list[_Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.flwr_home = self.workdir / "flwr_home"
        self.flwr_home.mkdir(exist_ok=True)

    # ------------------------------------------------------------------ environment
    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of every process: this one's, fedseg's Flower defaults, a private
        ``FLWR_HOME``, then ``env``, then ``extra``."""
        out = dict(os.environ)
        for key, value in ENV_DEFAULTS.items():
            out.setdefault(key, value)
        out["FLWR_HOME"] = str(self.flwr_home)
        out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
        out.update(self.env)
        out.update(extra or {})
        return out

    # ------------------------------------------------------------------ processes
    def start(self, name: str, args: Sequence[str], *, env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start a long-running process (own session, output to ``logs/<name>.log``)."""
        log = self.workdir / "logs" / f"{name}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                list(args), cwd=self.workdir, env=self.environment(env), stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.procs.append(_Proc(name, popen, log))
        return popen

    def run(self, args: Sequence[str], *, timeout: float, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to completion (killed after ``timeout`` s)."""
        try:
            done = subprocess.run(list(args), cwd=self.workdir, env=self.environment(env), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise LoopbackError(f"{' '.join(args)} did not finish within {timeout:.0f} s\n{self.logs_tail()}") from exc
        if check and done.returncode != 0:
            raise LoopbackError(
                f"{' '.join(args)} exited {done.returncode}\nstdout: {done.stdout[-3000:]}\n"
                f"stderr: {done.stderr[-3000:]}\n{self.logs_tail()}"
            )
        return done

    def log_text(self, name: str) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def logs_tail(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {p.name} (pid {p.popen.pid}, rc {p.popen.poll()}):\n{self.log_text(p.name)[-chars:]}"
                         for p in self.procs)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every started process: SIGTERM to its process group, SIGKILL after ``timeout``."""
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                try:
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # helpers of the group (SuperExec, flwr-serverapp) may outlive the leader
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.popen.poll() is None:
                proc.popen.wait(timeout=5)
        self.procs.clear()

    def __enter__(self) -> LoopbackFederation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
