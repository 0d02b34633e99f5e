"""Events for a module nobody consumes: the relay never stacks copies of them on its queue,
and once a worker for the module heartbeats they are processed."""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from bus.broker.inspector import BrokerInspector
from bus.broker.queues import queue_name
from bus.events.rules import utcnow
from bus.maintenance.resend import run_once
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import heartbeat_store
from bus.storage.db import transaction
from tests.support.factories import insert_events
from tests.support.processes import BIN, Proc, settings_env, wait_for
from tests.support.services import REDIS_URL
from tests.support.tokens import TokenFactory
from tests.support.workers import WORKER_SETTINGS, WorkerFactory, load, publish, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("effects")]

LEASE = 1.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The integration suite's, with a short lease and quick heartbeats."""
    return {
        **WORKER_SETTINGS,
        "relay_lease_seconds": LEASE,
        "relay_interval_seconds": 0.1,
        "worker_heartbeat_seconds": 0.5,
    }


def watch_depth(r: redis.Redis, queue: str, seconds: float) -> list[int]:
    """The queue's length, sampled every 50 ms for ``seconds``."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(int(r.llen(queue)))
        time.sleep(0.05)
    return samples


def unserved(runtime: Runtime) -> list[tuple[str, int]]:
    since = heartbeat_store.live_since(utcnow(), runtime.settings.worker_heartbeat_seconds)
    with transaction(runtime.sessions) as session:
        rows = heartbeat_store.pending_without_live_worker(
            session, runtime.settings.queue_prefix, since
        )
    return [(row.target_module, row.pending) for row in rows]


def test_an_event_for_a_module_nobody_consumes_keeps_one_copy_over_many_leases(
    settings: Settings,
    runtime: Runtime,
    client: TestClient,
    token: TokenFactory,
    start_worker: WorkerFactory,
) -> None:
    # Given an event for a module no worker serves, and a relay with a 1 s lease
    queue = queue_name("warehouse", settings.queue_prefix)
    event = publish(client, token(), "warehouse")
    relay = Proc([str(BIN / "eventbus"), "relay"], settings_env(settings))
    r = redis.Redis.from_url(REDIS_URL)
    try:
        # When six leases pass
        depths = watch_depth(r, queue, 6 * LEASE)
        # Then its queue never held more than the one copy the publish sent
        assert max(depths) == 1 and depths[-1] == 1, depths
        relay.wait_for_output("no live worker for warehouse", 5)
        assert unserved(runtime) == [("warehouse", 1)]
        # And once a worker for the module starts, the event is processed
        start_worker("warehouse")
        wait_for_status(runtime, event["id"], "processed", 20)
        wait_for(lambda: r.llen(queue) == 0, 10, "a copy was left on the queue")
        assert unserved(runtime) == []
    finally:
        relay.stop()
        r.close()


def test_an_expired_lease_is_resent_only_when_no_copy_can_be_waiting(
    settings: Settings, runtime: Runtime
) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    queue = queue_name("warehouse", settings.queue_prefix)
    lease = timedelta(seconds=LEASE)
    try:
        # Given an event whose send was stamped a lease ago, for a module with no live worker,
        # whose queue is empty (the broker lost the copy)
        now = utcnow()
        insert_events(runtime, 1, dispatched_at=now - lease - timedelta(seconds=1))
        # Then the relay sends it again: no copy can be waiting
        assert run_once(runtime, now=now) == 1
        assert r.llen(queue) == 1
        # But a lease later, with that copy waiting and still nobody serving the module, not
        later = now + 2 * lease
        assert run_once(runtime, now=later) == 0
        assert r.llen(queue) == 1
        # Nor when a worker heartbeats for the module: it will drain the copy that waits
        with transaction(runtime.sessions) as session:
            heartbeat_store.beat(
                session, settings.queue_prefix, ["warehouse"], "test-worker", later
            )
        assert run_once(runtime, now=later) == 0
        # And once the copy is gone from the queue (a worker took it, then died), it is
        r.delete(queue)
        assert run_once(runtime, now=later) == 1
        assert r.llen(queue) == 1
        # A never-sent event is sent whatever the module's state
        insert_events(runtime, 1, target_module="nosuchmodule")
        assert run_once(runtime, now=later) == 1
    finally:
        with transaction(runtime.sessions) as session:
            heartbeat_store.forget(session, settings.queue_prefix, "test-worker")
        r.close()


def processed(runtime: Runtime, event: dict[str, str]) -> bool:
    return load(runtime, event["id"]).status == "processed"


def test_where_queue_lengths_are_unknown_only_a_live_worker_gets_resends(
    settings: Settings, runtime: Runtime
) -> None:
    # Given a broker whose queue lengths cannot be read (as RabbitMQ here) and an event whose
    # send was stamped a lease ago
    blind = BrokerInspector("memory://")
    now = utcnow()
    insert_events(runtime, 1, dispatched_at=now - timedelta(seconds=LEASE + 1))
    try:
        # Then with no live worker for its module, the relay does not send it again
        assert run_once(runtime, now=now, broker=blind) == 0
        # And once a worker heartbeats for the module, it does
        with transaction(runtime.sessions) as session:
            heartbeat_store.beat(session, settings.queue_prefix, ["warehouse"], "test-worker", now)
        assert run_once(runtime, now=now, broker=blind) == 1
    finally:
        with transaction(runtime.sessions) as session:
            heartbeat_store.forget(session, settings.queue_prefix, "test-worker")


def test_a_whole_worker_killed_mid_event_gets_it_back_once_one_runs_again(
    settings: Settings,
    runtime: Runtime,
    client: TestClient,
    token: TokenFactory,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    # Given a solo-pool worker whose handler SIGKILLs the whole worker on its first attempt
    # (run twice: the first run is uncounted, the redelivery counts attempt 1 before it runs,
    # tests/integration/test_rabbitmq.py), and a relay with a 1 s lease
    trace = tmp_path / "attempts"
    queue = queue_name("warehouse", settings.queue_prefix)
    worker = start_worker("warehouse", pool="solo", concurrency=1)
    relay = Proc([str(BIN / "eventbus"), "relay"], settings_env(settings))
    r = redis.Redis.from_url(REDIS_URL)
    try:
        event = publish(client, token(), "warehouse", kill_until=1, trace=str(trace))
        for death in range(3):
            wait_for(
                lambda w=worker: w.popen.poll() is not None or processed(runtime, event), 15, ""
            )
            if worker.popen.poll() is None:
                break
            assert worker.popen.returncode == -signal.SIGKILL
            # When it stays down for four leases
            depths = watch_depth(r, queue, 4 * LEASE)
            # Then the relay re-sent the lost delivery once (its queue was empty), never more
            assert max(depths) == 1 and depths[-1] == 1, (death, depths)
            # And a supervisor starts a worker again
            worker = start_worker("warehouse", pool="solo", concurrency=1)
        # Then it ends processed: the third run, after two deaths
        wait_for_status(runtime, event["id"], "processed", 20)
        assert [line.split()[0] for line in trace.read_text().splitlines()] == ["1", "1", "2"]
    finally:
        relay.stop()
        r.close()
