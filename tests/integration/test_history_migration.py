"""Migrations 0008 and 0010 on a database that already holds a million events, while the API
publishes and old events complete: no publish fails or waits long, no event is lost, the old
rows stay readable by id and counted exactly, the old table becomes the legacy partition
without a copy, and the in-flight set holds exactly the unfinished events."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app
from bus.runtime import Runtime
from bus.storage import event_store, partitions
from bus.storage.db import transaction
from bus.storage.migrate import upgrade
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.services import empty_database, make_settings
from tests.support.tokens import TENANT_A, auth, make_token

ROWS = 1_000_000
EVENTS = "/system/events"

LOAD = f"""
INSERT INTO system_events (
    id, tenant_id, event_type, source_module, target_module, entity_type, entity_id,
    event_data, status, retry_count, created_at, processed_at
)
SELECT gen_random_uuid(), '{TENANT_A}', 'type_' || (g % 7), 'inventory', 'warehouse', 'item',
    'item-' || g, jsonb_build_object('n', g),
    CASE WHEN g % 50 = 0 THEN 'pending' ELSE 'processed' END, 0,
    now() - g * interval '500 milliseconds', now()
FROM generate_series(1, {ROWS}) AS g
"""  # noqa: S608 (constants only)


class Completer(threading.Thread):
    """Completes given events, 50 a transaction, as workers would, until stopped or done."""

    def __init__(self, runtime: Runtime, ids: list[uuid.UUID]) -> None:
        super().__init__(daemon=True)
        self.runtime = runtime
        self.waiting = ids
        self.done: list[uuid.UUID] = []
        self.errors: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        outcome = {"status": "processed", "processed_at": datetime.now(UTC)}
        while self.waiting and not self.stopped.is_set():
            batch, self.waiting = self.waiting[:50], self.waiting[50:]
            try:
                with transaction(self.runtime.sessions) as session:
                    event_store.save_outcomes(session, [(i, outcome) for i in batch])
                self.done.extend(batch)
            except Exception as exc:  # a statement refused while a lock was held: noted
                self.errors.append(repr(exc))
            time.sleep(0.02)


class Publisher(threading.Thread):
    """Publishes the seed's body through the API over and over until stopped."""

    def __init__(self, client: TestClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.headers = auth(make_token())
        self.ids: list[str] = []
        self.refused: list[str] = []
        self.slowest = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            response = self.client.post(EVENTS, json=SEED_PUBLISH_BODY, headers=self.headers)
            self.slowest = max(self.slowest, time.monotonic() - started)
            if response.status_code == 201:
                self.ids.append(response.json()["event"]["id"])
            else:
                self.refused.append(f"{response.status_code} {response.text}")


def assert_in_flight_set(
    runtime: Runtime, client: TestClient, waiting: int, done: list[uuid.UUID]
) -> None:
    """The in-flight set is exactly the unfinished events, whenever they finished."""
    with runtime.engine.connect() as conn:
        queued = conn.execute(text("SELECT count(*) FROM event_queue")).scalar_one()
        unqueued = conn.execute(
            text(
                "SELECT count(*) FROM system_events e WHERE status <> 'processed' "
                "AND NOT EXISTS (SELECT 1 FROM event_queue q WHERE q.id = e.id)"
            )
        ).scalar_one()
    assert (queued, unqueued) == (waiting, 0)
    page = {"status": "pending", "limit": 1000}
    listed = client.get(EVENTS, params=page, headers=auth(make_token())).json()
    assert not {str(i) for i in done} & {e["id"] for e in listed["events"]}


def assert_legacy_partition(runtime: Runtime, stored: int) -> None:
    """The old table became the partition of everything before the cut-over midnight."""
    with runtime.engine.connect() as conn:
        found = {p.name: p for p in partitions.partitions(conn)}
        legacy_rows = conn.execute(
            text(f"SELECT count(*) FROM ONLY {partitions.LEGACY}")  # noqa: S608
        ).scalar_one()
    legacy = found[partitions.LEGACY]
    assert legacy.lo is None and legacy.hi is not None
    assert legacy.hi - datetime.now(UTC) > timedelta(hours=1)  # the cut-over midnight
    # the old table became the partition: every event published so far is in it
    assert legacy_rows == stored


@pytest.mark.timeout(600)
def test_a_million_events_are_partitioned_online_while_publishing() -> None:
    with empty_database() as url:
        upgrade(url, "0007")
        runtime = Runtime(make_settings(url))
        try:
            with runtime.engine.begin() as conn:
                conn.execute(text(LOAD))
                legacy_id = conn.execute(
                    text("SELECT id FROM system_events ORDER BY created_at LIMIT 1")
                ).scalar_one()
                old_pending = list(
                    conn.execute(
                        text("SELECT id FROM system_events WHERE status = 'pending' LIMIT 10000")
                    ).scalars()
                )
            with TestClient(create_app(runtime=runtime), raise_server_exceptions=False) as client:
                publisher = Publisher(client)
                publisher.start()
                time.sleep(1.0)
                before = len(publisher.ids)
                started = time.monotonic()
                upgrade(url, "0009")
                completer = Completer(runtime, old_pending)
                completer.start()  # old events complete while 0010 fills the in-flight set
                upgrade(url)
                took = time.monotonic() - started
                during = len(publisher.ids) - before
                time.sleep(1.0)
                publisher.stopped.set()
                completer.stopped.set()
                publisher.join(30)
                completer.join(30)

                h = auth(make_token())
                assert publisher.refused == []
                assert during > 0, "no publish went through while the migration ran"
                print(
                    f"migration of {ROWS:,} events: {took:.1f}s; {during} publishes meanwhile,"
                    f" slowest {publisher.slowest * 1000:.0f} ms"
                )
                assert took < 120
                assert publisher.slowest < 10.0
                # every event published before, during and after is there, exactly counted
                with runtime.engine.connect() as conn:
                    stored = conn.execute(text("SELECT count(*) FROM system_events")).scalar_one()
                assert stored == ROWS + len(publisher.ids)
                page = client.get(EVENTS, params={"limit": 1}, headers=h).json()
                assert page["total"] == stored
                for event_id in (*publisher.ids[:5], *publisher.ids[-5:], str(legacy_id)):
                    assert client.get(f"{EVENTS}/{event_id}", headers=h).status_code == 200
                pending = client.get(EVENTS, params={"status": "pending"}, headers=h).json()
                waiting = ROWS // 50 + len(publisher.ids) - len(completer.done)
                assert pending["total"] == waiting
                print(f"{len(completer.done)} old events completed meanwhile")
                assert completer.done and not completer.errors
                assert_in_flight_set(runtime, client, waiting, completer.done)

            assert_legacy_partition(runtime, stored)
            assert uuid.UUID(publisher.ids[-1]).version == 7
        finally:
            runtime.close()
