"""The relay: sends what publishing could not, shares work between relays, respects its lease."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from bus.broker.queues import queue_name
from bus.events.rules import utcnow
from bus.maintenance.resend import run_once
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage.models import EventStatus
from tests.support.factories import insert_events
from tests.support.processes import BIN, Proc, settings_env, wait_for
from tests.support.queues import queued_ids
from tests.support.servers import RedisServer
from tests.support.services import REDIS_URL
from tests.support.tokens import TokenFactory
from tests.support.workers import WorkerFactory, load, publish, send_stamp, wait_for_status

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
        row = load(runtime, event["id"])
        assert row.status == "pending" and send_stamp(runtime, event["id"]) is None
    # When Redis comes back, with a worker and a relay on it
    dead_redis.start()
    start_worker("warehouse", worker_settings=down)
    relay_settings = down.model_copy(update={"relay_interval_seconds": 0.2})
    relay = Proc([str(BIN / "eventbus"), "relay"], settings_env(relay_settings))
    try:
        # Then the relay sends it and the worker processes it
        wait_for_status(runtime, event["id"], "processed", 10)
        # And the relay stops cleanly on SIGTERM
        assert relay.stop(signal.SIGTERM, timeout=5) == 0, relay.output
    finally:
        relay.stop(signal.SIGKILL)
        api_bus.close()


def test_several_relays_send_each_due_event_once(settings: Settings, runtime: Runtime) -> None:
    # Given 300 events that were never sent, and relays taking small batches
    ids = insert_events(runtime, 300)
    small = Runtime(settings.model_copy(update={"relay_batch_size": 25}))
    sent: list[int] = []

    def relay() -> None:
        while n := run_once(small):
            sent.append(n)

    # When three relays run at once
    threads = [threading.Thread(target=relay) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    small.close()
    # Then every event was sent exactly once
    assert sum(sent) == 300
    queued = queued_ids(settings)
    assert set(queued) == {str(i) for i in ids}
    assert max(queued.values()) == 1


def test_the_relay_resends_only_what_its_lease_says_may_be_lost(
    settings: Settings, runtime: Runtime
) -> None:
    lease = timedelta(seconds=settings.relay_lease_seconds)
    now = utcnow()
    # Given events sent just now, events sent longer than a lease ago, a failed event whose
    # retry is due, one whose retry is not due yet, and one failed for good
    recent = insert_events(runtime, 2, dispatched_at=now)
    stale = insert_events(runtime, 2, dispatched_at=now - lease - timedelta(seconds=1))
    due = insert_events(
        runtime,
        1,
        status=EventStatus.FAILED,
        retry_count=1,
        next_attempt_at=now - timedelta(seconds=1),
        dispatched_at=now - lease - timedelta(seconds=1),
    )
    insert_events(
        runtime,
        1,
        status=EventStatus.FAILED,
        retry_count=1,
        next_attempt_at=now + timedelta(seconds=60),
        dispatched_at=now - lease - timedelta(seconds=1),
    )
    insert_events(runtime, 1, status=EventStatus.FAILED, retry_count=3, next_attempt_at=None)
    # When the relay runs
    assert run_once(runtime, now=now) == 3
    # Then it sent the stale and the due ones, stamped them, and nothing else
    assert set(queued_ids(settings)) == {str(i) for i in stale + due}
    for event_id in stale + due:
        stamped = send_stamp(runtime, event_id)
        assert isinstance(stamped, datetime) and abs((stamped - now).total_seconds()) < 1
    assert send_stamp(runtime, recent[0]) == now
    # And a second pass right after finds nothing to send
    assert run_once(runtime, now=now) == 0


def test_pending_events_are_sent_again_when_the_broker_lost_them(
    settings: Settings, runtime: Runtime, client: TestClient, token: TokenFactory
) -> None:
    # Given a published event whose message the broker lost (its queue flushed)
    event = publish(client, token(), "warehouse")
    redis.Redis.from_url(REDIS_URL).delete(queue_name("warehouse", settings.queue_prefix))
    assert queued_ids(settings) == Counter()
    # When the lease has run out
    later = utcnow() + timedelta(seconds=settings.relay_lease_seconds + 1)
    # Then the relay sends it again
    assert run_once(runtime, now=later) == 1
    wait_for(lambda: queued_ids(settings)[event["id"]] == 1, 2, "the event was not re-queued")


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
            assert send_stamp(runtime, during["id"]) is None
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
