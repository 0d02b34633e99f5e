"""The SQL of single events in ``system_events``: insert, read, claim, lock, save an
outcome (named for their intent); and the relay's send stamps, kept in the in-flight set
(``event_queue``, which the database keeps beside every write of an event).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb
from sqlalchemy import (
    Table,
    TextClause,
    Update,
    and_,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bus.events.ids import window
from bus.storage.models import (
    EventRow,
    EventStatus,
    SystemEvent,
    event_queue,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


_table: Table = SystemEvent.__table__  # type: ignore[assignment]
_queue = event_queue


_INSERT = insert(_table)

# Every look-up by id also bounds ``created_at`` to the ids' window (``bus.events.ids``): the
# history is partitioned by ``created_at``, and the bound lets PostgreSQL read only the
# partitions those ids can be in (one, for an id the bus made) instead of every day's.
_NEAR = and_(
    _table.c.created_at >= bindparam("lo", type_=_table.c.created_at.type),
    _table.c.created_at < bindparam("hi", type_=_table.c.created_at.type),
)


def _near(event_ids: Collection[uuid.UUID]) -> dict[str, datetime]:
    lo, hi = window(event_ids)
    return {"lo": lo, "hi": hi}


def insert_event(session: Session, values: dict[str, Any]) -> None:
    """One INSERT through Core, on the session's connection: the ORM's unit of work (and its
    execution layer) costs more than the row."""
    session.connection().execute(_INSERT, values)


def insert_events(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Many rows (every column given) in ONE statement on PostgreSQL: ``INSERT … SELECT FROM
    unnest(<one array per column>)``, whose text is the same for any number of rows, so it is
    parsed and planned once. Elsewhere (SQLite) an executemany of the plain INSERT."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        connection.execute(_INSERT, list(rows))
        return
    columns = tuple(rows[0])
    params = {name: [_array_value(name, row[name]) for row in rows] for name in columns}
    connection.execute(_unnest_insert(columns), params)


def insert_events_once(session: Session, rows: Sequence[Mapping[str, Any]]) -> set[uuid.UUID]:
    """Like :func:`insert_events`, but a row whose id is already stored is left alone
    (``ON CONFLICT (id) DO NOTHING``): returns the ids that were new. The outbox forwarder's
    write, so a batch forwarded again after a crash stores and sends nothing twice."""
    if not rows:
        return set()
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        new: set[uuid.UUID] = set()
        for row in rows:
            stmt = sqlite_insert(_table).values(dict(row)).on_conflict_do_nothing()
            if connection.execute(stmt).rowcount == 1:
                new.add(row["id"])
        return new
    columns = tuple(rows[0])
    params: dict[str, Any] = {
        name: [_array_value(name, row[name]) for row in rows] for name in columns
    }
    params.update(_near([row["id"] for row in rows]))
    return set(connection.execute(_unnest_insert_once(columns), params).scalars())


def _array_value(name: str, value: Any) -> Any:
    if name == "event_data":
        return Jsonb(value)
    if isinstance(value, StrEnum):
        return str(value)
    return value


def _unnest(columns: tuple[str, ...]) -> str:
    arrays = ", ".join(
        f"CAST(:{name} AS {_table.c[name].type.compile(dialect=_PG)}[])" for name in columns
    )
    return f"unnest({arrays}) AS v({', '.join(columns)})"


# The texts below are built from the table's own column names, never from input (S608).


@functools.cache
def _unnest_insert(columns: tuple[str, ...]) -> TextClause:
    names = ", ".join(columns)
    return text(f"INSERT INTO {_table.name} ({names}) SELECT {names} FROM {_unnest(columns)}")  # noqa: S608


@functools.cache
def _unnest_insert_once(columns: tuple[str, ...]) -> TextClause:
    # The key is (id, created_at): an id stored already is looked for by id too, in case
    # the row forwarded again carries another created_at (a version-4 outbox id).
    names = ", ".join(columns)
    return text(
        f"INSERT INTO {_table.name} ({names}) SELECT {names} FROM {_unnest(columns)} "  # noqa: S608
        f"WHERE NOT EXISTS (SELECT 1 FROM {_table.name} e WHERE e.id = v.id "
        "AND e.created_at >= :lo AND e.created_at < :hi) "
        "ON CONFLICT DO NOTHING RETURNING id"
    )


@functools.cache
def _unnest_update(columns: tuple[str, ...]) -> TextClause:
    sets = ", ".join(f"{name} = v.{name}" for name in columns)
    return text(
        f"UPDATE {_table.name} AS e SET {sets} "  # noqa: S608
        f"FROM {_unnest(('id', *columns))} WHERE e.id = v.id "
        "AND e.created_at >= :lo AND e.created_at < :hi"
    )


def read_event(
    session: Session, event_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> EventRow | None:
    """An event, unlocked: in ``tenant_id`` (any tenant when None). The tenant is in the WHERE,
    so another tenant's event is never fetched."""
    stmt, params = _READ, {"event_id": event_id, **_near((event_id,))}
    if tenant_id is not None:
        stmt, params = _READ_IN_TENANT, {**params, "tenant_id": tenant_id}
    row = session.connection().execute(stmt, params).mappings().first()
    return None if row is None else EventRow(**row)


_READ = select(_table).where(_table.c.id == bindparam("event_id"), _NEAR)
_READ_IN_TENANT = _READ.where(_table.c.tenant_id == bindparam("tenant_id"))


def ping(session: Session) -> None:
    """A round trip to the database (readiness)."""
    session.execute(select(1))


def claim_for_processing(
    session: Session, event_id: uuid.UUID, *, wait_seconds: float | None = None
) -> EventRow | None:
    """Lock the event for one attempt; None if another transaction holds it or it is gone.

    The row lock is the claim: it lasts until the attempt's transaction ends, and a crash
    releases it by rolling everything back. With ``wait_seconds`` the lock is waited for
    instead of skipped (raising ``OperationalError`` when the wait runs out): a delivery that
    follows a crashed one must not mistake the crash's rollback, still on its way, for a
    delivery running elsewhere.

    The row is read through Core into an :class:`EventRow` (no identity map, no unit of work,
    no instrumented attributes: a worker pays for one event thousands of times a second); the
    attempt's outcome
    goes back with :func:`save_outcomes`.
    """
    if wait_seconds is None:
        stmt = _CLAIM
    else:
        _limit_lock_wait(session, wait_seconds)
        stmt = _CLAIM_WAITING
    params = {"event_id": event_id, **_near((event_id,))}
    row = session.connection().execute(stmt, params).mappings().first()
    return None if row is None else EventRow(**row)


# Built once: a worker runs these for every event, and building a statement (and its cache key)
# costs more CPU than sending it. Executed on the session's connection, past the ORM.
_BY_ID = select(_table).where(_table.c.id == bindparam("event_id"), _NEAR)
_CLAIM = _BY_ID.with_for_update(skip_locked=True)
_CLAIM_WAITING = _BY_ID.with_for_update()


@functools.cache
def _update_statement(columns: tuple[str, ...]) -> Update:
    """``UPDATE system_events SET <columns> WHERE id = :event_id``, built once per column set."""
    return (
        update(_table)
        .where(_table.c.id == bindparam("event_id"), _NEAR)
        .values({name: bindparam(f"new_{name}") for name in columns})
    )


def save_outcomes(
    session: Session, outcomes: Sequence[tuple[uuid.UUID, Mapping[str, Any]]]
) -> None:
    """Write status changes (each the same columns, ``bus.events.rules.OUTCOME_COLUMNS``) in ONE
    statement on PostgreSQL (``UPDATE … FROM unnest(…)``); one row is one plain UPDATE, and
    elsewhere an executemany of it."""
    if not outcomes:
        return
    connection = session.connection()
    columns = tuple(outcomes[0][1])
    if len(outcomes) > 1 and connection.dialect.name == "postgresql":
        params: dict[str, Any] = {
            name: [_array_value(name, v[name]) for _, v in outcomes] for name in columns
        }
        params["id"] = [event_id for event_id, _ in outcomes]
        params.update(_near(params["id"]))
        connection.execute(_unnest_update(columns), params)
        return
    rows = [
        {"event_id": event_id, **_near((event_id,)), **{f"new_{name}": v[name] for name in columns}}
        for event_id, v in outcomes
    ]
    connection.execute(_update_statement(columns), rows[0] if len(rows) == 1 else rows)


def claim_many(session: Session, event_ids: Sequence[uuid.UUID]) -> list[EventRow]:
    """Lock every event of a batch that no other transaction holds, in one statement
    (``FOR UPDATE SKIP LOCKED``), read as :func:`claim_for_processing`'s;
    the ones missing are locked elsewhere or gone (see :func:`existing`)."""
    params = {"ids": list(event_ids), **_near(event_ids)}
    result = session.connection().execute(_CLAIM_MANY, params)
    return [EventRow(**row) for row in result.mappings()]


_CLAIM_MANY = (
    select(_table)
    .where(_table.c.id.in_(bindparam("ids", expanding=True)), _NEAR)
    .with_for_update(skip_locked=True)
)


def unprocessed_targets(session: Session, event_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The target module of each of these events that exists and is not processed; reads no
    lock."""
    stmt = select(_table.c.id, _table.c.target_module).where(
        _table.c.id.in_(list(event_ids)), _NEAR, _table.c.status != EventStatus.PROCESSED
    )
    rows = session.execute(stmt, _near(event_ids))
    return {event_id: module for event_id, module in rows}


def existing(session: Session, event_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these ids name an event (in any tenant); reads no lock."""
    if not event_ids:
        return set()
    stmt = select(_table.c.id).where(_table.c.id.in_(list(event_ids)), _NEAR)
    return set(session.scalars(stmt, _near(event_ids)))


def lock_event(
    session: Session, event_id: uuid.UUID, tenant_id: uuid.UUID | None
) -> EventRow | None:
    """An event in a tenant (any tenant when None), row-locked until the transaction ends,
    read as :func:`claim_for_processing`'s."""
    stmt = _CLAIM_WAITING if tenant_id is None else _LOCK_IN_TENANT
    params = {"event_id": event_id, "tenant_id": tenant_id, **_near((event_id,))}
    row = session.connection().execute(stmt, params).mappings().first()
    return None if row is None else EventRow(**row)


_LOCK_IN_TENANT = (
    select(_table)
    .where(
        _table.c.id == bindparam("event_id"), _NEAR, _table.c.tenant_id == bindparam("tenant_id")
    )
    .with_for_update()
)


def _limit_lock_wait(session: Session, seconds: float) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(func.set_config("lock_timeout", f"{max(1, round(seconds * 1000))}ms", True))
        )
