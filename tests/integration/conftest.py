"""Real workers for delivery tests: ``eventbus worker`` subprocesses on the test's own queues.

Settings reach a subprocess only through ``EVENTBUS_*`` variables, built from the test's
:class:`Settings`; the test handlers come from ``tests.integration.handlers``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage.models import SystemEvent
from tests.conftest import SEED_PUBLISH_BODY, auth, make_settings
from tests.integration.handlers import EFFECTS_TABLE
from tests.procs import Proc, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
HANDLERS = "tests.integration.handlers"
RABBITMQ_URL = os.environ.get("EVENTBUS_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
WORKER_START_TIMEOUT = 30.0

# Small retry delays keep the suite quick; the ratios are the production ones.
FAST_RETRIES: dict[str, Any] = {
    "retry_max_attempts": 3,
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 2.0,
}


@pytest.fixture
def settings(database_url: str) -> Settings:
    # No metrics port: several workers may run at once, here and in other suites.
    return make_settings(database_url, handlers=HANDLERS, metrics_port=0, **FAST_RETRIES)


@pytest.fixture(autouse=True)
def effects(database_url: str) -> Iterator[None]:
    """The table the test handlers write to, empty for each test."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(EFFECTS_TABLE))
        conn.execute(text("TRUNCATE handler_effects"))
    engine.dispose()
    yield


def settings_env(settings: Settings) -> dict[str, str]:
    """The process environment, with every EVENTBUS_* variable taken from ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        env[f"EVENTBUS_{name.upper()}"] = value.value if isinstance(value, Enum) else str(value)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


WorkerFactory = Callable[..., Proc]


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[WorkerFactory]:
    """``start_worker(modules="warehouse", pool="prefork", concurrency=2, settings=...)``:
    an ``eventbus worker`` subprocess, returned once it consumes; stopped after the test."""
    started: list[Proc] = []

    def start(
        modules: str | None = None,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        worker_settings: Settings | None = None,
    ) -> Proc:
        argv = [str(BIN / "eventbus"), "worker", "--pool", pool, "--concurrency", str(concurrency)]
        if modules:
            argv += ["--modules", modules]
        proc = Proc([*argv, "--loglevel", "INFO"], settings_env(worker_settings or settings))
        started.append(proc)
        proc.wait_for_line(" ready.", WORKER_START_TIMEOUT)
        return proc

    yield start
    for proc in started:
        proc.stop()


def load(runtime: Runtime, event_id: str | uuid.UUID) -> SystemEvent:
    """The event's row as the database has it now."""
    with runtime.sessions() as session:
        row = session.get(SystemEvent, uuid.UUID(str(event_id)))
        assert row is not None, f"event {event_id} is not in the database"
        return row


def wait_for_status(runtime: Runtime, event_id: str, status: str, timeout: float) -> SystemEvent:
    last: list[SystemEvent] = []

    def reached() -> bool:
        row = load(runtime, event_id)
        last[:] = [row]
        if status == "failed":
            return row.status == status and row.next_attempt_at is None
        return row.status == status

    try:
        wait_for(reached, timeout, f"event {event_id} never became {status}")
    except AssertionError as exc:
        row = last[0]
        raise AssertionError(
            f"{exc}; it is {row.status}, retry_count {row.retry_count}, "
            f"error {row.error_message!r}, next attempt {row.next_attempt_at}"
        ) from None
    return last[0]


def publish(
    client: TestClient, tok: str, target_module: str = "warehouse", **data: Any
) -> dict[str, Any]:
    """POST an event for ``target_module`` whose data steers the test handler."""
    body = {**SEED_PUBLISH_BODY, "target_module": target_module, "event_data": data}
    response = client.post("/system/events", headers=auth(tok), json=body)
    assert response.status_code == 201, response.text
    event: dict[str, Any] = response.json()["event"]
    return event


def effects_of(database_url: str, event_id: str) -> list[int]:
    """The attempt numbers of the handler writes that committed for an event."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT attempt FROM handler_effects WHERE event_id = :e ORDER BY id"),
                {"e": event_id},
            )
            return [r.attempt for r in rows]
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server of the test's own on a free loopback port, which the test may kill."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._popen = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, f"redis-server on port {self.port} did not start")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self._popen and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait(10)
