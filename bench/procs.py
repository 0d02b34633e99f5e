"""Processes the bench starts: each one logged to a file and stopped by its own PID.

Nothing here looks up processes by name: the bench only signals PIDs it spawned itself (and
the children those PIDs forked, found through psutil while the parent is still alive).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A phase could not run (a process died, a wait timed out); the message says which."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``check`` until it is true; seconds waited. Bounded: raises after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic() - start
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_ok(port: int, path: str = "/healthz") -> bool:
    """True if ``GET path`` on loopback answers 200."""
    try:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


class Proc:
    """One child process with its output in ``<log_dir>/<name>.log``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = self.log_path.open("wb")
        # A session of its own: a Ctrl-C on the bench reaches the bench, which then stops
        # each child in order, instead of every child racing to die at once.
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with {self.popen.returncode}; log tail:\n{self.tail()}"
            )

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def interrupt(self, timeout: float = 30.0) -> int | None:
        """SIGINT, as Ctrl-C would (py-spy writes its profile on it), then ``stop``."""
        if self.alive():
            self.popen.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        return self.stop()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; forked children that outlive it are killed."""
        children: list[psutil.Process] = []
        if self.alive():
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(self.pid).children(recursive=True)
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        for child in children:
            # psutil compares the creation time too, so a recycled PID is never signalled.
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode


class Stack:
    """Every process of a run, stopped in reverse order of starting, whatever happens."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 30.0) -> None:
        proc.stop(timeout)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        while self._procs:
            proc = self._procs.pop()
            with contextlib.suppress(Exception):
                proc.stop()


def python_argv(module: str, *args: str) -> list[str]:
    """Run a module of this repository with the bench's own interpreter (the venv's)."""
    return [sys.executable, "-m", module, *args]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The bench's environment without inherited ``EVENTBUS_*``, plus ``extra``.

    Stray settings from the caller's shell (another database, another broker) must never
    leak into the processes under test.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
