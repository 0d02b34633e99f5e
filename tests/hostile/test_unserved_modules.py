"""Events for a module nobody consumes: the relay and the publishes never stack more than the
bound of wake-ups on its queue, and once a worker for the module runs they are processed."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from bus.broker.queues import queue_name
from bus.events.rules import utcnow
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import heartbeat_store
from bus.storage.db import transaction
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
    # Given events for a module no worker serves, and a relay waking it every 0.1 s
    queue = queue_name("warehouse", settings.queue_prefix)
    tok = token()
    event = publish(client, tok, "warehouse")
    for _ in range(20):
        publish(client, tok, "warehouse")
    relay = Proc([str(BIN / "eventbus"), "relay"], settings_env(settings))
    r = redis.Redis.from_url(REDIS_URL)
    try:
        # When six seconds pass
        depths = watch_depth(r, queue, 6 * LEASE)
        # Then its queue never held more than the bound of wake-ups
        assert max(depths) == settings.wakeups_per_module, depths
        assert unserved(runtime) == [("warehouse", 21)]
        # And once a worker for the module starts, the event is processed
        start_worker("warehouse")
        wait_for_status(runtime, event["id"], "processed", 20)
        wait_for(lambda: r.llen(queue) == 0, 10, "a copy was left on the queue")
        assert unserved(runtime) == []
    finally:
        relay.stop()
        r.close()


def processed(runtime: Runtime, event: dict[str, str]) -> bool:
    return load(runtime, event["id"]).status == "processed"


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
    # tests/integration/test_rabbitmq.py), and a relay
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
            # When it stays down for four seconds
            depths = watch_depth(r, queue, 4 * LEASE)
            # Then the relay woke the module, and kept no more than the bound of wake-ups
            assert 1 <= max(depths) <= settings.wakeups_per_module, (death, depths)
            # And a supervisor starts a worker again
            worker = start_worker("warehouse", pool="solo", concurrency=1)
        # Then it ends processed: the third run, after two deaths
        wait_for_status(runtime, event["id"], "processed", 20)
        assert [line.split()[0] for line in trace.read_text().splitlines()] == ["1", "1", "2"]
    finally:
        relay.stop()
        r.close()
