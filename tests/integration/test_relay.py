"""The relay: wakes the modules whose events no message woke a worker for (publishing could not
send, the broker lost its messages), a wake-up per module whatever the backlog."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from bus.broker.queues import queue_name
from bus.events.rules import utcnow
from bus.maintenance.resend import run_once
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import claim_store
from bus.storage.db import transaction
from bus.storage.models import EventStatus
from tests.support.factories import insert_events
from tests.support.processes import BIN, Proc, settings_env, wait_for
from tests.support.queues import _messages, queued_ids
from tests.support.servers import RedisServer
from tests.support.services import REDIS_URL
from tests.support.tokens import TokenFactory
from tests.support.workers import WorkerFactory, load, publish, wait_for_status

pytestmark = pytest.mark.integration


@pytest.fixture
def dead_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, not started yet: a broker that is down."""
    server = RedisServer()
    yield server
    server.stop()


def test_publishing_while_the_broker_is_down_then_the_relay_sends(
    settings: Settings,
    runtime: Runtime,
    token: TokenFactory,
    start_worker: WorkerFactory,
    dead_redis: RedisServer,
) -> None:
    # Given an API whose broker is down
    down = settings.model_copy(update={"broker_url": dead_redis.url})
    api_bus = Runtime(down)
    with TestClient(create_app(runtime=api_bus)) as client:
        # When an event is published
        started = time.monotonic()
        event = publish(client, token(), "warehouse")
        # Then it is accepted promptly, pending, and left unsent for the relay
        assert time.monotonic() - started < 3.0
        assert load(runtime, event["id"]).status == "pending"
    # When Redis comes back, with a worker and a relay on it
    dead_redis.start()
    start_worker("warehouse", worker_settings=down)
    relay_settings = down.model_copy(update={"relay_interval_seconds": 0.2})
    relay = Proc([str(BIN / "eventbus"), "relay"], settings_env(relay_settings))
    try:
        # Then it is processed (the relay, or the worker's own poll, woke the module)
        wait_for_status(runtime, event["id"], "processed", 10)
        relay.wait_for_output("relay started", 10)
        # And the relay stops cleanly on SIGTERM
        assert relay.stop(signal.SIGTERM, timeout=5) == 0, relay.output
    finally:
        relay.stop(signal.SIGKILL)
        api_bus.close()


def test_relays_keep_at_most_the_bound_of_wake_ups_whatever_the_backlog(
    settings: Settings, runtime: Runtime
) -> None:
    # Given 300 events never sent, of one module
    insert_events(runtime, 300)
    # When three relays run at once, again and again
    threads = [
        threading.Thread(target=lambda: [run_once(runtime) for _ in range(10)]) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then the module's queue holds wake-ups up to the bound, not a message per event
    assert len(_messages(settings, "warehouse")) == settings.wakeups_per_module


def test_the_relay_wakes_only_modules_with_a_ready_event(
    settings: Settings, runtime: Runtime
) -> None:
    now = utcnow()
    # Given a pending event, a failed one whose retry is due, one whose retry is not due, one
    # failed for good, and a pending event of a paused module
    insert_events(runtime, 1, target_module="warehouse")
    insert_events(
        runtime,
        1,
        target_module="logistics",
        status=EventStatus.FAILED,
        retry_count=1,
        next_attempt_at=now - timedelta(seconds=1),
    )
    insert_events(
        runtime,
        1,
        target_module="billing",
        status=EventStatus.FAILED,
        retry_count=1,
        next_attempt_at=now + timedelta(seconds=60),
    )
    insert_events(
        runtime, 1, target_module="shipping", status=EventStatus.FAILED, next_attempt_at=None
    )
    insert_events(runtime, 1, target_module="paused")
    with transaction(runtime.sessions) as session:
        claim_store.pause(session, "paused", now, "maintenance")
    # When the relay runs
    assert run_once(runtime) == 2
    # Then it woke the modules with something to run, and no other
    for module, woken in [
        ("warehouse", 1),
        ("logistics", 1),
        ("billing", 0),
        ("shipping", 0),
        ("paused", 0),
    ]:
        assert len(_messages(settings, module)) == woken, module


def test_pending_events_are_woken_for_again_when_the_broker_lost_them(
    settings: Settings, runtime: Runtime, client: TestClient, token: TokenFactory
) -> None:
    # Given a published event whose message the broker lost (its queue flushed)
    event = publish(client, token(), "warehouse")
    redis.Redis.from_url(REDIS_URL).delete(queue_name("warehouse", settings.queue_prefix))
    assert queued_ids(settings) == Counter()
    # Then the relay wakes the module again, naming the event as a hint
    assert run_once(runtime) == 1
    wait_for(lambda: queued_ids(settings)[event["id"]] == 1, 2, "the module was not woken")


def test_the_broker_dying_under_a_running_bus(
    settings: Settings,
    runtime: Runtime,
    token: TokenFactory,
    start_worker: WorkerFactory,
    dead_redis: RedisServer,
) -> None:
    # Given an API, a worker and a relay on a Redis of the test's own
    dead_redis.start()
    own = settings.model_copy(update={"broker_url": dead_redis.url, "relay_interval_seconds": 0.2})
    api_bus = Runtime(own)
    worker = start_worker("warehouse", worker_settings=own)
    relay = Proc([str(BIN / "eventbus"), "relay"], settings_env(own))
    try:
        with TestClient(create_app(runtime=api_bus)) as client:
            tok = token()
            before = publish(client, tok, "warehouse")
            wait_for_status(runtime, before["id"], "processed", 5)
            # When Redis dies (with every message it held) and an event is published meanwhile
            dead_redis.kill()
            during = publish(client, tok, "warehouse")
            # And Redis comes back, empty, on the same port
            dead_redis.start()
            # Then the relay sends the event and the reconnected worker processes it. The bound
            # is Celery's: a consumer that lost its broker retries after 2, 4, 6… s (at most 30 s
            # apart), and under CPU load a try can land just before Redis is back; seen: the
            # message waiting on the list after 30 s while the worker was between tries.
            try:
                wait_for_status(runtime, during["id"], "processed", 90)
            except AssertionError as exc:
                tails = f"relay:\n{relay.output[-3000:]}\nworker:\n{worker.output[-6000:]}"
                raise AssertionError(f"{exc}\n{tails}") from None
            # And events published afterwards flow as before
            after = publish(client, tok, "warehouse")
            wait_for_status(runtime, after["id"], "processed", 10)
    finally:
        relay.stop()
        api_bus.close()
