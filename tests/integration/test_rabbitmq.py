"""The same bus on RabbitMQ, chosen by EVENTBUS_BROKER_URL alone."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kombu import Connection

from bus.broker.queues import queue_name
from bus.delivery.attempts import INTERRUPTED_MESSAGE
from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.processes import wait_for
from tests.support.services import RABBITMQ_URL
from tests.support.tokens import TokenFactory, auth
from tests.support.workers import (
    FAST_RETRIES,
    WORKER_SETTINGS,
    WorkerFactory,
    load,
    publish,
    wait_for_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

MODULES = ("warehouse", "flaky", "poison")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The integration settings, on RabbitMQ; heartbeats every second, so a dead worker's
    claims end within ~4 s (3 missed beats and a poll) rather than ~16 s, longer than a wait
    below allows."""
    return {**WORKER_SETTINGS, "broker_url": RABBITMQ_URL, "worker_heartbeat_seconds": 1.0}


@pytest.fixture(autouse=True)
def _delete_queues(settings: Settings) -> Iterator[None]:
    """The test's RabbitMQ queues are deleted afterwards."""
    yield
    with Connection(RABBITMQ_URL, connect_timeout=5) as conn:
        channel = conn.default_channel
        for module in MODULES:
            channel.queue_delete(queue_name(module, settings.queue_prefix))


def test_end_to_end_on_rabbitmq(
    client: TestClient, token: TokenFactory, runtime: Runtime, start_worker: WorkerFactory
) -> None:
    # Given an event published before any worker for its module ever ran
    assert runtime.settings.broker_url.startswith("amqp://")
    tok = token()
    early = publish(client, tok, "warehouse")
    # When a worker starts
    start_worker("warehouse")
    # Then the event waited in its durable queue and is processed, as is a later one
    wait_for_status(runtime, early["id"], "processed", 10)
    later = publish(client, tok, "warehouse")
    row = wait_for_status(runtime, later["id"], "processed", 5)
    assert row.retry_count == 0 and row.processed_at is not None
    shown = client.get("/system/events", headers=auth(tok)).json()["events"]
    assert {e["status"] for e in shown} == {"processed"}


def test_retries_on_rabbitmq(
    client: TestClient, token: TokenFactory, runtime: Runtime, start_worker: WorkerFactory
) -> None:
    # Given a worker whose handler fails twice for one event and always for another
    start_worker("flaky")
    tok = token()
    recovers = publish(client, tok, "flaky", fail_until=2)
    never = publish(client, tok, "flaky", fail_until=99)
    # Then one is processed after two failures and the other ends failed after all attempts
    assert wait_for_status(runtime, recovers["id"], "processed", 15).retry_count == 2
    failed = wait_for_status(runtime, never["id"], "failed", 15)
    assert failed.retry_count == FAST_RETRIES["retry_max_attempts"]
    assert failed.error_message is not None and "planned failure" in failed.error_message


def test_a_poison_event_that_kills_the_whole_worker_ends_failed(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    # Given a solo-pool worker, in which a handler that SIGKILLs its process kills the worker:
    # no main process survives to count the attempt; the next worker ends the dead one's claim
    # once its heartbeat lapses and runs the event again, counting the lost run
    trace = tmp_path / "attempts"
    event = publish(client, token(), "poison", kill_until=99, trace=str(trace))
    # When a supervisor restarts the worker each time it dies
    for restart in range(FAST_RETRIES["retry_max_attempts"] + 2):
        worker = start_worker("poison", pool="solo", concurrency=1)
        exited = wait_for(
            lambda w=worker: w.popen.poll() is not None or bus_failed(runtime, event["id"]),
            15,
            f"worker {restart} neither died nor saw the event end",
        )
        if worker.popen.poll() is None:
            break
        assert exited and worker.popen.returncode == -signal.SIGKILL
    # Then each redelivery counted its attempt and the event ended failed, bounded
    row = wait_for_status(runtime, event["id"], "failed", 5)
    attempts = FAST_RETRIES["retry_max_attempts"]
    assert row.retry_count == attempts
    assert row.error_message == INTERRUPTED_MESSAGE
    runs = [int(line.split()[0]) for line in trace.read_text().splitlines()]
    assert runs == [1, *range(1, attempts + 1)]  # the first run, then the counted ones


def bus_failed(runtime: Runtime, event_id: str) -> bool:
    row = load(runtime, event_id)
    return row.status == "failed" and row.next_attempt_at is None
