"""The partitioned history (issue 19): a day a partition, made ahead, found by an id's time,
dropped whole past the retention with the counts kept exact, nothing in flight dropped."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from bus.events.ids import created_at_of, new_event_id, window
from bus.events.schemas import ListQuery
from bus.maintenance import retention
from bus.runtime import Runtime
from bus.storage import event_queries, event_store, partitions
from bus.storage.db import transaction
from bus.storage.models import EventStatus
from tests.support.factories import SEED_PUBLISH_BODY, event_values, make_events
from tests.support.tokens import TENANT_A

EVENTS = "/system/events"
TODAY = datetime.now(UTC).date()


def home(runtime: Runtime, event_id: uuid.UUID) -> str:
    """The partition a stored event sits in."""
    with runtime.engine.connect() as conn:
        return str(
            conn.execute(
                text("SELECT tableoid::regclass::text FROM system_events WHERE id = :id"),
                {"id": event_id},
            ).scalar_one()
        )


def days(runtime: Runtime) -> list[partitions.Partition]:
    with runtime.engine.connect() as conn:
        return partitions.partitions(conn)


def total(runtime: Runtime, **filters: str) -> int:
    with transaction(runtime.sessions) as session:
        return event_queries.count_events(session, TENANT_A, ListQuery(filters))


def stored(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM system_events WHERE tenant_id = :t"), {"t": TENANT_A}
            ).scalar_one()
        )


def at(day: date, hour: int = 12) -> datetime:
    return partitions.midnight(day) + timedelta(hours=hour)


def old_events(n: int, day: date, **overrides: Any) -> list[dict[str, Any]]:
    """Events the bus made on ``day``: version-7 ids naming their created_at."""
    rows = []
    for i in range(n):
        created = at(day) + timedelta(seconds=i)
        values = {"status": EventStatus.PROCESSED, "processed_at": created, **overrides}
        rows.append(event_values(id=new_event_id(created), created_at=created, **values))
    return rows


@pytest.fixture
def made_days(runtime: Runtime) -> Iterator[list[date]]:
    """Days a test makes partitions for; whatever is left of them is dropped afterwards."""
    made: list[date] = []
    yield made
    with runtime.engine.begin() as conn:
        for day in made:
            conn.execute(text(f"DROP TABLE IF EXISTS {partitions.day_name(day)}"))


def make_day(runtime: Runtime, day: date, made: list[date]) -> bool:
    made.append(day)
    with runtime.engine.begin() as conn:
        return partitions.make_day(conn, day)


def test_a_new_database_has_days_from_yesterday_on_and_a_default(runtime: Runtime) -> None:
    found = days(runtime)
    names = [p.name for p in found]
    assert partitions.LEGACY not in names  # a database without events has no legacy part
    assert found[-1].default and found[-1].name == partitions.DEFAULT
    dated = [p for p in found if not p.default]
    assert dated[0].lo == partitions.midnight(TODAY - timedelta(days=1))
    assert dated[-1].hi is not None and dated[-1].hi >= partitions.midnight(TODAY + timedelta(8))
    for before, after in itertools.pairwise(dated):
        assert before.hi == after.lo  # no gap, no overlap
        assert after.lo is not None and after.hi == after.lo + timedelta(days=1)


def test_a_publish_lands_in_its_day_and_its_id_names_its_time(
    runtime: Runtime, client: TestClient, h: dict[str, str]
) -> None:
    response = client.post(EVENTS, json=SEED_PUBLISH_BODY, headers=h)
    assert response.status_code == 201, response.text
    event_id = uuid.UUID(response.json()["event"]["id"])
    named = created_at_of(event_id)
    assert named is not None
    assert home(runtime, event_id) == partitions.day_name(named.date())
    assert client.get(f"{EVENTS}/{event_id}", headers=h).status_code == 200


def plan(runtime: Runtime, sql: str, params: dict[str, Any]) -> str:
    with runtime.engine.connect() as conn:
        return "\n".join(
            row[0] for row in conn.execute(text(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}"), params)
        )


def test_a_look_up_by_id_reads_one_partition(runtime: Runtime) -> None:
    [event] = make_events(runtime, old_events(1, TODAY, status=EventStatus.PENDING))
    lo, hi = window([event["id"]])
    by_id = "SELECT * FROM system_events WHERE id = :id AND created_at >= :lo AND created_at < :hi"
    shown = plan(runtime, by_id, {"id": event["id"], "lo": lo, "hi": hi})
    scanned = [line for line in shown.splitlines() if " on system_events_" in line]
    assert len(scanned) == 1, shown
    assert partitions.day_name(TODAY) in scanned[0]
    # and the store's own reads find it so (claim, read, lock)
    with transaction(runtime.sessions) as session:
        assert event_store.read_event(session, event["id"]) is not None
        assert [r.id for r in event_store.claim_many(session, [event["id"]])] == [event["id"]]
    # an id that names no time (version 4: stored before the partitions) is still found
    [legacy] = make_events(runtime, [event_values()])
    with transaction(runtime.sessions) as session:
        assert event_store.read_event(session, legacy["id"]) is not None


def test_a_day_made_late_takes_its_events_from_the_default_partition(
    runtime: Runtime, made_days: list[date]
) -> None:
    later = TODAY + timedelta(days=60)
    rows = make_events(runtime, old_events(3, later, status=EventStatus.PENDING))
    assert {home(runtime, r["id"]) for r in rows} == {partitions.DEFAULT}
    before = total(runtime)
    assert make_day(runtime, later, made_days)
    assert {home(runtime, r["id"]) for r in rows} == {partitions.day_name(later)}
    assert total(runtime) == before == stored(runtime)
    assert not make_day(runtime, later, made_days)  # made once


def test_retention_drops_a_whole_old_day_and_the_counts_stay_exact(
    runtime: Runtime, made_days: list[date]
) -> None:
    old = TODAY - timedelta(days=45)
    assert make_day(runtime, old, made_days)
    make_events(runtime, old_events(40, old))
    make_events(runtime, old_events(7, old, status=EventStatus.FAILED, event_type="x"))
    recent = make_events(runtime, old_events(5, TODAY))
    assert total(runtime) == 52 == stored(runtime)

    assert retention.Retention(runtime).run() == 47

    assert partitions.day_name(old) not in [p.name for p in days(runtime)]
    assert stored(runtime) == 5 == total(runtime)
    assert total(runtime, event_type="x") == 0
    assert total(runtime, status="processed") == 5
    assert {home(runtime, r["id"]) for r in recent} == {partitions.day_name(TODAY)}


def test_a_day_holding_an_event_in_flight_waits_for_it(
    runtime: Runtime, made_days: list[date], caplog: pytest.LogCaptureFixture
) -> None:
    old = TODAY - timedelta(days=45)
    assert make_day(runtime, old, made_days)
    make_events(runtime, old_events(10, old))
    [waiting] = make_events(runtime, old_events(1, old, status=EventStatus.PENDING))
    [retrying] = make_events(
        runtime,
        old_events(1, old, status=EventStatus.FAILED, next_attempt_at=datetime.now(UTC)),
    )
    keeper = retention.Retention(runtime)
    with caplog.at_level(logging.WARNING):
        assert keeper.run() == 0
        assert keeper.run() == 0
    held = [r for r in caplog.records if "kept" in r.getMessage()]
    assert len(held) == 1 and "2 of its events" in held[0].getMessage()  # said once
    assert stored(runtime) == 12 == total(runtime)

    with transaction(runtime.sessions) as session:
        done = {"status": "processed", "next_attempt_at": None}
        event_store.save_outcomes(session, [(waiting["id"], done), (retrying["id"], done)])
    assert keeper.run() == 12
    assert stored(runtime) == 0 == total(runtime)


def test_stray_old_events_in_the_default_partition_are_deleted_when_finished(
    runtime: Runtime,
) -> None:
    long_ago = TODAY - timedelta(days=400)  # no partition covers it
    make_events(runtime, old_events(4, long_ago))
    [pending] = make_events(runtime, old_events(1, long_ago, status=EventStatus.PENDING))
    assert retention.Retention(runtime).run() == 4
    assert stored(runtime) == 1 == total(runtime)
    assert home(runtime, pending["id"]) == partitions.DEFAULT


def test_the_chore_makes_the_days_ahead(runtime: Runtime, made_days: list[date]) -> None:
    ahead = runtime.settings.partitions_ahead
    last = max(p.hi for p in days(runtime) if p.hi is not None).date()  # exclusive
    # a pass some days later makes the days that are then ahead, and only those
    later = last - timedelta(days=ahead - 1)
    wanted = [later + timedelta(days=n) for n in range(ahead + 1) if later + timedelta(n) >= last]
    made_days.extend(wanted)
    assert retention.make_ahead(runtime, now=at(later)) == len(wanted) == 2
    names = [p.name for p in days(runtime)]
    assert all(partitions.day_name(day) in names for day in wanted)
    assert retention.make_ahead(runtime, now=at(later)) == 0


def test_the_database_reads_an_ids_time_as_the_bus_does(runtime: Runtime) -> None:
    ids = [new_event_id(at(TODAY) + timedelta(microseconds=n * 7919)) for n in range(50)]
    with runtime.engine.connect() as conn:
        read = conn.execute(
            text("SELECT eventbus_id_time(i) FROM unnest(CAST(:ids AS uuid[])) AS i"),
            {"ids": ids},
        ).scalars()
        assert list(read) == [created_at_of(i) for i in ids]
        other = conn.execute(text("SELECT eventbus_id_time(gen_random_uuid())")).scalar()
    assert other is None


def test_spans_shorter_than_a_day_for_soaks(runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"partition_minutes": 5})
    later = at(TODAY + timedelta(days=40), hour=10) + timedelta(minutes=7)
    try:
        assert retention.make_ahead(runtime, now=later) == runtime.settings.partitions_ahead + 2
        spans = [p for p in days(runtime) if p.lo is not None and p.lo.date() == later.date()]
        assert [p.name for p in spans][:2] == [
            f"system_events_p{later:%Y%m%d}_1000",
            f"system_events_p{later:%Y%m%d}_1005",
        ]
        assert all(p.hi is not None and p.hi - p.lo == timedelta(minutes=5) for p in spans)
    finally:
        with runtime.engine.begin() as conn:
            for p in days(runtime):
                if p.lo is not None and p.lo.date() == later.date():
                    conn.execute(text(f"DROP TABLE {p.name}"))


def test_sqlite_keeps_one_table_and_deletes_finished_old_rows(tmp_path: Any) -> None:
    from bus.settings import Settings
    from bus.storage.migrate import upgrade
    from tests.support.services import make_settings

    url = f"sqlite:///{tmp_path / 'dev.db'}"
    upgrade(url)
    settings: Settings = make_settings(url)
    lite = Runtime(settings)
    try:
        long_ago = TODAY - timedelta(days=45)
        make_events(lite, old_events(3, long_ago))
        make_events(lite, old_events(1, long_ago, status=EventStatus.PENDING))
        make_events(lite, old_events(2, TODAY))
        assert retention.make_ahead(lite) == 0  # nothing to partition
        assert retention.Retention(lite).run() == 3
        with lite.engine.connect() as conn:
            left = conn.execute(text("SELECT status FROM system_events")).scalars().all()
        assert sorted(left) == ["pending", "processed", "processed"]
    finally:
        lite.close()
