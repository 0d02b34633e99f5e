"""Reading Prometheus text the way a scrape does, waits, and ``eventbus`` subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bus.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def has(samples: Samples, name: str, **labels: str) -> bool:
    wanted = set(labels.items())
    return any(n == name and wanted <= ls for n, ls in samples)


def wait_for(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (after {timeout:.1f}s)")
        time.sleep(interval)


class Proc:
    """An ``eventbus`` subprocess whose merged output a thread collects, for waits and
    diagnostics; stopped with SIGTERM (its whole group SIGKILLed if it will not stop)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
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
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def json_lines(self) -> list[dict[str, Any]]:
        """The output lines that are JSON log records."""
        with self._lock:
            lines = list(self.lines)
        records = []
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records

    def wait_for_output(self, needle: str, timeout: float, count: int = 1) -> None:
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

    def stop(self, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            return self.popen.wait(5)
        finally:
            self._reader.join(5)


def eventbus_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an ``eventbus`` subprocess: every EVENTBUS_* from ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EVENTBUS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    for name in Settings.model_fields:
        setting = getattr(settings, name)
        env[f"EVENTBUS_{name.upper()}"] = (
            setting.value if isinstance(setting, Enum) else str(setting)
        )
    env["EVENTBUS_LOG_FORMAT"] = "json"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def eventbus(*args: str) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "eventbus"), *args]
