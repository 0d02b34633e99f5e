"""Real ``eventbus worker`` runs on a test's own queues, with the handlers of
:mod:`tests.support.handlers`: starting one, publishing for it, reading what it did."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from bus.broker.celery_app import make_celery
from bus.broker.queues import queue_name
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage.models import SystemEvent, event_queue
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import Proc, eventbus, settings_env, wait_for
from tests.support.queues import queue_length
from tests.support.tokens import auth

HANDLERS = "tests.support.handlers"
WORKER_START_TIMEOUT = 30.0

# Small retry delays keep the suites quick; the ratios are the production ones.
FAST_RETRIES: dict[str, Any] = {
    "retry_max_attempts": 3,
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 2.0,
}
WORKER_SETTINGS: dict[str, Any] = {"handlers": HANDLERS, "metrics_port": 0, **FAST_RETRIES}
"""What a suite with real workers changes in a test's settings: the test handlers, fast
retries, and no metrics port (several workers may run at once, here and in other suites)."""

EFFECTS_TABLE = """
CREATE TABLE IF NOT EXISTS handler_effects (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL
)
"""

WorkerFactory = Callable[..., Proc]


def run_worker(
    settings: Settings,
    modules: str | None = None,
    *,
    pool: str = "prefork",
    concurrency: int = 2,
) -> Proc:
    """An ``eventbus worker`` subprocess over ``settings``, returned once it consumes."""
    argv = eventbus("worker", "--pool", pool, "--concurrency", str(concurrency))
    if modules:
        argv += ["--modules", modules]
    proc = Proc([*argv, "--loglevel", "INFO"], settings_env(settings))
    try:
        proc.wait_for_line(" ready.", WORKER_START_TIMEOUT)
    except AssertionError:
        proc.stop()
        raise
    return proc


def worker_node(worker: Proc) -> str:
    """The Celery node name of an ``eventbus worker`` subprocess (workers/worker.py)."""
    return f"eventbus-{worker.popen.pid}@{socket.gethostname()}"


def worker_answers(worker: Proc, settings: Settings) -> bool:
    """Whether the worker answers a Celery ping: its consumer is up."""
    app = make_celery(settings)
    try:
        return bool(app.control.ping(destination=[worker_node(worker)], timeout=0.5))
    finally:
        app.close()


def wait_for_idle(worker: Proc, settings: Settings, modules: list[str], timeout: float) -> None:
    """Wait until the worker holds no task (none running, prefetched or waiting for its ETA, as
    it answers Celery's ``inspect``) and its modules' queues are empty, twice in a row (a
    message between a queue and the worker is in neither): nothing more can run unless sent."""
    app = make_celery(settings)
    inspect = app.control.inspect(destination=[worker_node(worker)], timeout=1.0)
    streak = [0]

    def idle() -> bool:
        held = [inspect.active(), inspect.reserved(), inspect.scheduled()]
        empty = all(answer and not any(answer.values()) for answer in held)
        empty = empty and all(
            queue_length(queue_name(m, settings.queue_prefix)) == 0 for m in modules
        )
        streak[0] = streak[0] + 1 if empty else 0
        return streak[0] >= 2

    try:
        wait_for(idle, timeout, f"the worker for {modules} never went idle", interval=0.1)
    finally:
        app.close()


def load(runtime: Runtime, event_id: str | uuid.UUID) -> SystemEvent:
    """The event's row as the database has it now."""
    with runtime.sessions() as session:
        row = session.get(SystemEvent, uuid.UUID(str(event_id)))
        assert row is not None, f"event {event_id} is not in the database"
        return row


def send_stamp(runtime: Runtime, event_id: str | uuid.UUID) -> datetime | None:
    """When the event was last sent, as the relay reads it (the in-flight set's stamp); the
    event must still be in flight."""
    with runtime.engine.connect() as conn:
        row = conn.execute(
            select(event_queue.c.dispatched_at).where(event_queue.c.id == uuid.UUID(str(event_id)))
        ).first()
    assert row is not None, f"event {event_id} is not in flight"
    return row.dispatched_at


def wait_for_status(runtime: Runtime, event_id: str, status: str, timeout: float) -> SystemEvent:
    """Wait until the event has ``status`` (``failed``: with no retry scheduled); its row."""
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


def create_effects_table(database_url: str) -> None:
    """The table the test handlers write to (``write``), created if missing and emptied."""
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(EFFECTS_TABLE))
            conn.execute(text("TRUNCATE handler_effects"))
    finally:
        engine.dispose()


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
