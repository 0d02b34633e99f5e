"""The in-flight set (issue 19): ``event_queue`` holds exactly the events not processed, kept
by the database beside every write of an event; the history's indexes hold no column a status
change writes, so a completion is a HOT update."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from bus.events.ids import new_event_id
from bus.events.rules import OUTCOME_COLUMNS
from bus.maintenance import retention, vacuum
from bus.runtime import Runtime
from bus.storage import event_store, partitions, upkeep_store
from bus.storage.db import transaction
from bus.storage.models import EventStatus
from tests.support.factories import event_values, make_events
from tests.support.processes import wait_for
from tests.support.tokens import TokenFactory
from tests.support.workers import publish

OUTCOME = {
    "status": EventStatus.PROCESSED,
    "retry_count": 0,
    "processed_at": None,
    "error_message": None,
    "next_attempt_at": None,
    "dispatched_at": None,
}


def in_flight(runtime: Runtime, event_id: Any) -> dict[str, Any] | None:
    with runtime.engine.connect() as conn:
        row = (
            conn.execute(
                text("SELECT status, due_at, dispatched_at FROM event_queue WHERE id = :id"),
                {"id": uuid.UUID(str(event_id))},
            )
            .mappings()
            .first()
        )
    return None if row is None else dict(row)


def change(runtime: Runtime, event_id: Any, **values: Any) -> None:
    """An outcome written as the status rules write it (every outcome column)."""
    with transaction(runtime.sessions) as session:
        event_store.save_outcomes(session, [(uuid.UUID(str(event_id)), {**OUTCOME, **values})])


def test_the_set_follows_every_status_change(
    runtime: Runtime, client: TestClient, token: TokenFactory
) -> None:
    # A publish: pending, due from its creation, stamped as sent
    event = publish(client, token(), "warehouse")
    row = in_flight(runtime, event["id"])
    assert row is not None and row["status"] == "pending"
    assert row["due_at"] == datetime.fromisoformat(event["created_at"].replace("Z", "+00:00"))
    assert row["dispatched_at"] is not None
    # A failure with a retry to come: due at the retry
    retry_at = datetime.now(UTC) + timedelta(seconds=30)
    sent = datetime.now(UTC)
    change(runtime, event["id"], status="failed", next_attempt_at=retry_at, dispatched_at=sent)
    assert in_flight(runtime, event["id"]) == {
        "status": "failed",
        "due_at": retry_at,
        "dispatched_at": sent,
    }
    # A failure for good: still listed as failed, never due
    change(runtime, event["id"], status="failed")
    assert in_flight(runtime, event["id"]) == {
        "status": "failed",
        "due_at": None,
        "dispatched_at": None,
    }
    # Pending again (a retry by hand): due from that change's send
    again = datetime.now(UTC)
    change(runtime, event["id"], status="pending", dispatched_at=again)
    assert in_flight(runtime, event["id"]) == {
        "status": "pending",
        "due_at": again,
        "dispatched_at": again,
    }
    # Processed: out of the set
    change(runtime, event["id"], processed_at=datetime.now(UTC))
    assert in_flight(runtime, event["id"]) is None
    # And a replay brings it back
    response = client.post(
        "/system/events/replay",
        json={"status": "processed"},
        headers={"Authorization": f"Bearer {token()}"},
    )
    assert response.status_code == 200, response.text
    replayed = in_flight(runtime, event["id"])
    assert replayed is not None and replayed["status"] == "pending"


def test_the_set_holds_exactly_the_unfinished_events(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    made = make_events(
        runtime,
        [event_values(status=s) for s in ("pending", "processed", "failed") for _ in range(5)],
    )
    with transaction(runtime.sessions) as session:
        event_store.save_outcomes(
            session, [(r["id"], {**OUTCOME, "processed_at": now}) for r in made[:3]]
        )
    with runtime.engine.connect() as conn:
        unfinished = set(
            conn.execute(text("SELECT id FROM system_events WHERE status <> 'processed'")).scalars()
        )
        queued = set(conn.execute(text("SELECT id FROM event_queue")).scalars())
        # A DELETE and a TRUNCATE on the history take the set with them
        conn.execute(text("DELETE FROM system_events WHERE id = :id"), {"id": made[4]["id"]})
        after_delete = set(conn.execute(text("SELECT id FROM event_queue")).scalars())
        conn.execute(text("TRUNCATE system_events"))
        after_truncate = conn.execute(text("SELECT count(*) FROM event_queue")).scalar_one()
        conn.commit()
    assert queued == unfinished and len(queued) == 7
    assert after_delete == queued - {made[4]["id"]}
    assert after_truncate == 0


def test_no_index_of_the_history_holds_a_column_a_status_change_writes(runtime: Runtime) -> None:
    with runtime.engine.connect() as conn:
        indexed = conn.execute(
            text(
                "SELECT i.indexrelid::regclass::text, a.attname, pg_get_expr(i.indpred, i.indrelid)"
                " FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = 'system_events'::regclass"
            )
        ).all()
    assert indexed
    assert not [(name, column) for name, column, _ in indexed if column in OUTCOME_COLUMNS]
    assert not [name for name, _, predicate in indexed if predicate is not None]


def test_a_completion_is_a_hot_update(runtime: Runtime) -> None:
    # Given events published one by one today, then completed one at a time, as workers
    # do under moderate traffic
    made = make_events(runtime, [event_values(created_at=datetime.now(UTC)) for _ in range(60)])
    today = partitions.day_name(datetime.now(UTC).date())
    updated = hot = 0
    counted = text(
        "SELECT pg_stat_get_xact_tuples_updated(c.oid), "
        "pg_stat_get_xact_tuples_hot_updated(c.oid) FROM pg_class c WHERE c.relname = :name"
    )
    for row in made:
        with transaction(runtime.sessions) as session:
            before = session.execute(counted, {"name": today}).one()
            event_store.save_outcomes(
                session, [(row["id"], {**OUTCOME, "processed_at": datetime.now(UTC)})]
            )
            after = session.execute(counted, {"name": today}).one()
        updated += after[0] - before[0]
        hot += after[1] - before[1]
    # Then each was one update, nearly all of them HOT (no index entry written): a page full
    # of versions is pruned by the next update that finds it so, unless another transaction
    # still needs them (hence not all, on a busy database)
    assert updated == 60
    assert hot >= 54, f"{hot} of {updated} updates were HOT"


def test_a_dropped_day_takes_its_failed_events_out_of_the_set(runtime: Runtime) -> None:
    old = datetime.now(UTC).date() - timedelta(days=45)
    with runtime.engine.begin() as conn:
        partitions.make_day(conn, old)
    try:
        created = partitions.midnight(old) + timedelta(hours=3)
        gave_up = make_events(
            runtime,
            [
                event_values(
                    id=new_event_id(created + timedelta(seconds=n)),
                    created_at=created + timedelta(seconds=n),
                    status=EventStatus.FAILED,
                )
                for n in range(3)
            ],
        )
        assert all(in_flight(runtime, r["id"]) is not None for r in gave_up)
        assert retention.Retention(runtime).run() == 3
        assert all(in_flight(runtime, r["id"]) is None for r in gave_up)
    finally:
        with runtime.engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {partitions.day_name(old)}"))


def test_a_workers_batch_completes_with_no_index_entry(runtime: Runtime) -> None:
    # Given 300 events published in one batch today (on pages filled to the default half)
    made = make_events(runtime, [event_values(created_at=datetime.now(UTC)) for _ in range(1)])
    rows = [event_values(created_at=datetime.now(UTC)) for _ in range(300)]
    with transaction(runtime.sessions) as session:
        event_store.insert_events(session, rows)
    today = partitions.day_name(datetime.now(UTC).date())
    counted = text(
        "SELECT pg_stat_get_xact_tuples_updated(c.oid), "
        "pg_stat_get_xact_tuples_hot_updated(c.oid) FROM pg_class c WHERE c.relname = :name"
    )
    # When all of them complete in one statement, as a worker's batch does
    with transaction(runtime.sessions) as session:
        before = session.execute(counted, {"name": today}).one()
        done = {**OUTCOME, "processed_at": datetime.now(UTC)}
        event_store.save_outcomes(session, [(r["id"], done) for r in [*made, *rows]])
        after = session.execute(counted, {"name": today}).one()
    # Then every update found room on its own page: HOT (at 80 % full pages, 28 of 100 did)
    assert after[0] - before[0] == 301
    assert after[1] - before[1] >= 290, f"{after[1] - before[1]} of 301 HOT"


def test_the_maintenance_vacuums_the_set_when_dead_rows_pile_up(runtime: Runtime) -> None:
    # Given 12,000 events that went through the set (inserted, then processed: deleted) on a
    # server whose autovacuum may be off (this machine's is)
    now = datetime.now(UTC)
    rows = [
        event_values(id=new_event_id(now), created_at=now, entity_id=f"item-{n}")
        for n in range(12_000)
    ]
    with transaction(runtime.sessions) as session:
        event_store.insert_events(session, rows)
    with transaction(runtime.sessions) as session:
        event_store.save_outcomes(session, [(r["id"], OUTCOME) for r in rows])

    def dead() -> int:
        with runtime.engine.connect() as conn:
            return upkeep_store.dead_rows(conn)["event_queue"][1]

    wait_for(lambda: dead() >= 12_000, 20, "the statistics to count the dead rows")
    # When the maintenance's vacuum chore runs
    vacuumed = vacuum.vacuum_in_flight(runtime)
    # Then it vacuumed the set: the dead rows are gone
    assert vacuumed >= 12_000
    assert dead() < vacuum.MIN_DEAD
    # And with nothing piled up the next pass does nothing
    assert vacuum.vacuum_in_flight(runtime) == 0
