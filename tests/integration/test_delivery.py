"""Delivery through real workers on Redis and PostgreSQL: routing, idempotency, manual retry."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from bus.broker.dispatch import Dispatch
from bus.broker.queues import queue_name
from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.processes import BIN, settings_env
from tests.support.services import REDIS_URL
from tests.support.tokens import TokenFactory, auth
from tests.support.workers import (
    WorkerFactory,
    effects_of,
    load,
    publish,
    wait_for_idle,
    wait_for_status,
)

pytestmark = pytest.mark.integration

PROCESSING_BOUND = 5.0


def test_published_event_is_processed_by_its_module_worker(
    client: TestClient, token: TokenFactory, runtime: Runtime, start_worker: WorkerFactory
) -> None:
    # Given a worker for every module with a handler
    worker = start_worker()
    # When an event is published
    started = time.monotonic()
    response = client.post(
        "/system/events",
        headers={**auth(token()), "X-Request-ID": "req-e2e-1"},
        json={
            "event_type": "inventory_updated",
            "source_module": "inventory",
            "target_module": "warehouse",
            "entity_type": "inventory_item",
            "entity_id": "item-1",
            "event_data": {"new_quantity": 95},
        },
    )
    assert response.status_code == 201, response.text
    event_id = response.json()["event"]["id"]
    # Then the handler runs and the API shows it processed, within the bound
    wait_for_status(runtime, event_id, "processed", PROCESSING_BOUND)
    elapsed = time.monotonic() - started
    listed = client.get(
        "/system/events", headers=auth(token()), params={"status": "processed"}
    ).json()
    shown = next(e for e in listed["events"] if e["id"] == event_id)
    assert shown["processed_at"] is not None and shown["processed_at"].endswith("Z")
    assert shown["retry_count"] == 0 and shown["error_message"] is None
    assert elapsed < PROCESSING_BOUND
    # And the worker's log names the event and the publishing request
    worker.wait_for_line(f"event_id={event_id} request_id=req-e2e-1", 2)


def test_a_worker_runs_only_the_modules_it_serves(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
) -> None:
    # Given a worker started only for notifications
    start_worker("notifications")
    tok = token()
    # When one event is published for each module
    for_warehouse = publish(client, tok, "warehouse", write=True)
    for_notifications = publish(client, tok, "notifications", write=True)
    # Then notifications' event is processed
    wait_for_status(runtime, for_notifications["id"], "processed", PROCESSING_BOUND)
    # And once a later notifications event is processed too (the worker has fetched from its
    # queues since warehouse's message arrived), warehouse's waits in its own queue, untouched
    later = publish(client, tok, "notifications")
    wait_for_status(runtime, later["id"], "processed", PROCESSING_BOUND)
    assert load(runtime, for_warehouse["id"]).status == "pending"
    assert effects_of(settings.database_url, for_warehouse["id"]) == []
    broker = redis.Redis.from_url(REDIS_URL)
    assert broker.llen(queue_name("warehouse", settings.queue_prefix)) == 1
    assert broker.llen(queue_name("notifications", settings.queue_prefix)) == 0
    broker.close()


def test_the_same_message_delivered_several_times_has_one_effect(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
) -> None:
    # Given events whose handler writes a row through its session, slowly enough that
    # duplicates meet it mid-run
    worker = start_worker("warehouse", concurrency=3)
    tok = token()
    events = [publish(client, tok, "warehouse", write=True, sleep=0.3) for _ in range(4)]
    # When every message is sent twice more, each copy a message of its own
    for _ in range(2):
        for e in events:
            runtime.dispatcher.send([Dispatch(uuid.UUID(e["id"]), "warehouse")])
    # Then each event is processed once, with exactly one committed effect, counted once every
    # message has been consumed (each is a wake-up: the copies claim nothing)
    for event in events:
        wait_for_status(runtime, event["id"], "processed", 15)
    wait_for_idle(worker, settings, ["warehouse"], 15)
    for event in events:
        assert effects_of(settings.database_url, event["id"]) == [1]
    broker = redis.Redis.from_url(REDIS_URL)
    assert broker.llen(queue_name("warehouse", settings.queue_prefix)) == 0
    broker.close()


def test_an_event_without_a_handler_fails_with_a_reason(
    client: TestClient, token: TokenFactory, runtime: Runtime, start_worker: WorkerFactory
) -> None:
    # Given a worker serving a module nobody wrote a handler for
    start_worker("orphans")
    # When an event for it arrives
    event = publish(client, token(), "orphans")
    # Then it fails at once, saying why, with no retry scheduled
    row = wait_for_status(runtime, event["id"], "failed", PROCESSING_BOUND)
    assert row.error_message == "No handler for orphans/inventory_updated"
    assert row.retry_count == 1 and row.processed_at is None


def test_put_pending_runs_a_failed_event_again(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
) -> None:
    # Given an event that failed all its attempts (its handler fails three times)
    start_worker("flaky")
    tok = token()
    event = publish(client, tok, "flaky", fail_until=3, write=True)
    failed = wait_for_status(runtime, event["id"], "failed", 10)
    assert failed.retry_count == 3
    # When an operator sets it back to pending through the API
    response = client.put(
        f"/system/events/{event['id']}", headers=auth(tok), json={"status": "pending"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["event"]["status"] == "pending"
    # Then it is sent again and this fourth attempt succeeds
    row = wait_for_status(runtime, event["id"], "processed", PROCESSING_BOUND)
    assert row.retry_count == 3 and row.error_message is None
    assert effects_of(settings.database_url, event["id"]) == [4]


def test_worker_refuses_to_start_without_handlers(settings: Settings) -> None:
    env = settings_env(settings.model_copy(update={"handlers": ""}))
    result = subprocess.run(
        [str(BIN / "eventbus"), "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "no handlers are registered" in result.stderr


def test_waiting_for_the_relay_is_not_needed_for_prompt_delivery(
    client: TestClient, token: TokenFactory, runtime: Runtime, start_worker: WorkerFactory
) -> None:
    # Given a running worker and no relay
    start_worker("notifications")
    tok = token()
    # When a burst is published
    events = [publish(client, tok, "notifications") for _ in range(20)]
    # Then all are processed promptly: the send after commit delivered them
    deadline = time.monotonic() + PROCESSING_BOUND
    for event in events:
        wait_for_status(runtime, event["id"], "processed", max(0.1, deadline - time.monotonic()))
