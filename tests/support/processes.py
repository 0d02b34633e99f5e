"""Subprocesses of the tests (``eventbus`` commands), their environment, free ports, and the
one bounded wait, :func:`wait_for`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from bus.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"


def wait_for(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (after {timeout:.1f}s)")
        time.sleep(interval)


def eventbus(*args: str) -> list[str]:
    """The argv of the venv's ``eventbus`` command."""
    return [str(BIN / "eventbus"), *args]


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an ``eventbus`` subprocess: every EVENTBUS_* variable taken from
    ``settings`` (none inherited), this worktree first on the import path, then ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EVENTBUS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:  # unset (EVENTBUS_ARCHIVE_URL): "None" would be a value
            continue
        env[f"EVENTBUS_{name.upper()}"] = value.value if isinstance(value, Enum) else str(value)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def eventbus_env(settings: Settings, **extra: str) -> dict[str, str]:
    """:func:`settings_env` with JSON logs, for tests that read log records."""
    return settings_env(settings, **{"EVENTBUS_LOG_FORMAT": "json", **extra})


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts connections on the loopback ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Proc:
    """A subprocess whose merged output is collected by a thread, for waits and diagnostics."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def json_lines(self) -> list[dict[str, Any]]:
        """The output lines that are JSON log records."""
        with self._changed:
            lines = list(self.lines)
        records = []
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records

    def wait_for_output(self, needle: str, timeout: float, count: int = 1) -> None:
        """Wait until ``needle`` has appeared ``count`` times; fail if the process exits first."""

        def seen() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.argv[1:3]} exited ({self.popen.returncode}):\n{self.output[-4000:]}"
                )
            return self.output.count(needle) >= count

        try:
            wait_for(seen, timeout, f"{self.argv[1:3]} never printed {needle!r} x{count}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output[-4000:]}") from None

    def wait_for_line(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"{self.argv[1:3]} exited ({self.popen.returncode}) before printing "
                        f"{needle!r}:\n{self.output[-4000:]}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.argv[1:3]} did not print {needle!r} within {timeout:.0f}s:\n"
                        f"{self.output[-4000:]}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def send_signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stop it (SIGKILL to its whole group if it will not); returns the exit code."""
        self.send_signal(signum)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            return self.popen.wait(5)
        finally:
            self._reader.join(5)
