"""Counts kept as data (migration 0004): whatever writes the events — a publish, a batch, a
status change, the workers' outcomes, a plain INSERT, DELETE or TRUNCATE — the tally for every
filter combination equals a COUNT over the events, before and after the relay folds it."""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from typing import Any

from sqlalchemy import text

from bus.auth import Principal
from bus.events.rules import Change, save_changes
from bus.events.schemas import StatusChange
from bus.maintenance.counts import fold_counts
from bus.publish import service
from bus.runtime import Runtime
from bus.storage import count_store, event_store
from bus.storage.db import transaction
from bus.storage.models import EventStatus
from tests.support.factories import SEED_PUBLISH_BODY, event_values
from tests.support.tokens import TENANT_A, TENANT_B

FILTERS = ("event_type", "source_module", "target_module", "status", "entity_type")
VALUES = {
    "event_type": ["inventory_updated", "delivery_assigned"],
    "source_module": ["inventory", "logistics"],
    "target_module": ["warehouse", "notifications"],
    "status": ["pending", "processed", "failed"],
    "entity_type": ["inventory_item", "delivery"],
}


def body(rng: random.Random) -> dict[str, Any]:
    return {
        **SEED_PUBLISH_BODY,
        **{name: rng.choice(VALUES[name]) for name in FILTERS if name != "status"},
    }


def counted(runtime: Runtime, tenant: uuid.UUID | None, filters: dict[str, str]) -> int:
    where = ["true"] + [f"{name} = :{name}" for name in filters]
    params: dict[str, Any] = dict(filters)
    if tenant is not None:
        where.append("tenant_id = :tenant")
        params["tenant"] = tenant
    with runtime.engine.connect() as conn:
        sql = f"SELECT count(*) FROM system_events WHERE {' AND '.join(where)}"  # noqa: S608
        return int(conn.execute(text(sql), params).scalar_one())


def assert_tallies_exact(runtime: Runtime) -> None:
    combos = [
        dict(zip(names, values, strict=True))
        for size in (0, 1, 2)
        for names in itertools.combinations(FILTERS, size)
        for values in itertools.product(*(VALUES[n] for n in names))
    ]
    with runtime.sessions() as session:
        for tenant in (TENANT_A, TENANT_B, None):
            for filters in combos:
                tally = count_store.tally(session, tenant, filters)
                assert tally == counted(runtime, tenant, filters), (tenant, filters)
            # The stats read the same counts: each module's by status equals its COUNT
            for stats in count_store.stats_by_module(session, tenant):
                for status in EventStatus:
                    filters = {"target_module": stats.target_module, "status": str(status)}
                    assert getattr(stats, status) == counted(runtime, tenant, filters), filters


def test_every_write_path_keeps_the_counts_exact(runtime: Runtime) -> None:
    rng = random.Random(7)
    writer = {
        t: Principal("w", t, frozenset({"manage:system"}), False, "user")
        for t in (TENANT_A, TENANT_B)
    }
    # Given single publishes, a batch, and rows inserted straight into the table
    with runtime.unit_of_work() as uow:
        for n in range(30):
            service.publish(
                uow, runtime.settings, writer[(TENANT_A, TENANT_B)[n % 2]], None, body(rng)
            )
        batch = service.prepare_batch(
            runtime.settings, writer[TENANT_B], None, {"events": [body(rng) for _ in range(40)]}
        )
        service.store_published(uow, batch)
        uow.commit()
    with transaction(runtime.sessions) as session:
        event_store.insert_events(
            session, [event_values(tenant_id=TENANT_A, status=EventStatus.FAILED) for _ in range(5)]
        )
    assert_tallies_exact(runtime)
    # When statuses move (the workers' batched outcomes and PUTs), some rows are deleted, and
    # half of the changes are folded
    with runtime.unit_of_work() as uow:
        rows = [r for r in event_store.claim_many(uow.session, [e.id for e in batch])]
        changes = [
            Change(r, StatusChange(rng.choice(list(EventStatus))), failures_before=0) for r in rows
        ]
        save_changes(uow, changes)
        uow.commit()
    fold_counts(runtime)
    with runtime.unit_of_work() as uow:
        for event in batch[:10]:
            row = event_store.lock_event(uow.session, event.id, None)
            assert row is not None
            save_changes(uow, [Change(row, StatusChange(EventStatus.PROCESSED))])
        uow.commit()
    with runtime.engine.begin() as conn:
        conn.execute(
            text("DELETE FROM system_events WHERE entity_id = 'item-uuid-1' AND status = 'failed'")
        )
    # Then every tally equals the COUNT, folded or not
    assert_tallies_exact(runtime)
    fold_counts(runtime)
    assert_tallies_exact(runtime)
    with runtime.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM event_count_changes")).scalar_one() == 0
    # And a TRUNCATE empties them
    with runtime.engine.begin() as conn:
        conn.execute(text("TRUNCATE system_events"))
    with runtime.sessions() as session:
        assert count_store.tally(session, None, {}) == 0


def test_counts_stay_exact_under_concurrent_writers_and_folds(runtime: Runtime) -> None:
    # Given four threads publishing and moving statuses while two fold, all at once
    principal = Principal("w", TENANT_A, frozenset({"manage:system"}), False, "user")
    errors: list[BaseException] = []

    def publisher(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(15):
                with runtime.unit_of_work() as uow:
                    events = [
                        service.prepare_publish(runtime.settings, principal, None, body(rng))
                        for _ in range(5)
                    ]
                    service.store_published(uow, events)
                    uow.commit()
                with runtime.unit_of_work() as uow:
                    rows = event_store.claim_many(uow.session, [e.id for e in events])
                    save_changes(
                        uow, [Change(r, StatusChange(EventStatus.PROCESSED)) for r in rows]
                    )
                    uow.commit()
        except BaseException as exc:
            errors.append(exc)

    def folder() -> None:
        try:
            for _ in range(30):
                fold_counts(runtime)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=folder) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    # Then the counts are exact
    assert_tallies_exact(runtime)
    with runtime.sessions() as session:
        assert count_store.tally(session, TENANT_A, {"status": "processed"}) == 4 * 15 * 5
