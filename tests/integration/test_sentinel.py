"""The same bus on Redis behind Sentinel, chosen by EVENTBUS_BROKER_URL (``sentinel://…``) and
EVENTBUS_BROKER_SENTINEL_MASTER alone: a primary, its replica and three sentinels of the test's
own on loopback, and a real worker that follows a failover."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bus.broker.inspector import BrokerInspector
from bus.broker.queues import queue_name
from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.sentinel import MASTER, SentinelCluster
from tests.support.tokens import TokenFactory, auth
from tests.support.workers import WORKER_SETTINGS, WorkerFactory, publish, wait_for_status

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("redis-sentinel"), reason="needs redis-sentinel"),
]


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    made = SentinelCluster()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def settings_overrides(cluster: SentinelCluster) -> dict[str, Any]:
    """The integration settings, the broker behind the test's sentinels; heartbeats every
    second, so the claims of a worker cut off in a failover end within a few seconds."""
    return {
        **WORKER_SETTINGS,
        "broker_url": cluster.url,
        "broker_sentinel_master": MASTER,
        "worker_heartbeat_seconds": 1.0,
    }


def test_end_to_end_through_sentinel(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
    cluster: SentinelCluster,
) -> None:
    # Given an event published before any worker for its module ever ran (its wake-up waits
    # on the master the sentinels report)
    assert runtime.settings.broker_url.startswith("sentinel://")
    tok = token()
    early = publish(client, tok, "warehouse")
    inspector = BrokerInspector(settings.broker_url, sentinel_master=MASTER)
    try:
        queue = queue_name("warehouse", settings.queue_prefix)
        assert inspector.depths([queue]) == {queue: 1}
        assert queue in inspector.queues(settings.queue_prefix)
    finally:
        inspector.close()
    # When a worker starts
    start_worker("warehouse")
    # Then the event is processed, as is a later one, and the API is ready (its probe pings
    # the master through the sentinels)
    wait_for_status(runtime, early["id"], "processed", 10)
    later = publish(client, tok, "warehouse")
    row = wait_for_status(runtime, later["id"], "processed", 5)
    assert row.retry_count == 0 and row.processed_at is not None
    assert client.get("/readyz").status_code == 200
    shown = client.get("/system/events", headers=auth(tok)).json()["events"]
    assert {e["status"] for e in shown} == {"processed"}


def test_a_worker_follows_a_failover(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    start_worker: WorkerFactory,
    cluster: SentinelCluster,
) -> None:
    # Given a worker consuming through the sentinels, and an event it processed
    worker = start_worker("warehouse")
    tok = token()
    before = publish(client, tok, "warehouse")
    wait_for_status(runtime, before["id"], "processed", 10)
    # When the primary is SIGKILLed and the sentinels promote the replica
    promoted = cluster.fail_over()
    # Then events published now are processed by the same worker, on the new master, and the
    # API's probe answers from it
    after = [publish(client, tok, "warehouse") for _ in range(5)]
    for event in after:
        wait_for_status(runtime, event["id"], "processed", 60)
    assert worker.popen.poll() is None, worker.output[-3000:]
    assert client.get("/readyz").status_code == 200
    print(f"promoted {promoted:.1f} s after the kill")
