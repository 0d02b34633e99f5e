"""Every SQL statement the bus runs, named for its intent."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import (
    Select,
    Table,
    TextClause,
    TextualSelect,
    Update,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bus.models import (
    COUNT_KEY,
    EventRow,
    EventStatus,
    SystemEvent,
    UTCDateTime,
    event_attempts,
    event_count_changes,
    event_counts,
    event_outcome_minutes,
)
from bus.schemas import RETRY_SCHEDULED, ListQuery

_table: Table = SystemEvent.__table__  # type: ignore[assignment]
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


_INSERT = insert(_table)


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
    params = {name: [_array_value(name, row[name]) for row in rows] for name in columns}
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
    names = ", ".join(columns)
    return text(
        f"INSERT INTO {_table.name} ({names}) SELECT {names} FROM {_unnest(columns)} "  # noqa: S608
        "ON CONFLICT (id) DO NOTHING RETURNING id"
    )


@functools.cache
def _unnest_update(columns: tuple[str, ...]) -> TextClause:
    sets = ", ".join(f"{name} = v.{name}" for name in columns)
    return text(
        f"UPDATE {_table.name} AS e SET {sets} "  # noqa: S608
        f"FROM {_unnest(('id', *columns))} WHERE e.id = v.id"
    )


def read_event(
    session: Session, event_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> EventRow | None:
    """An event, unlocked: in ``tenant_id`` (any tenant when None). The tenant is in the WHERE,
    so another tenant's event is never fetched."""
    stmt, params = _READ, {"event_id": event_id}
    if tenant_id is not None:
        stmt, params = _READ_IN_TENANT, {**params, "tenant_id": tenant_id}
    row = session.connection().execute(stmt, params).mappings().first()
    return None if row is None else EventRow(**row)


_READ = select(_table).where(_table.c.id == bindparam("event_id"))
_READ_IN_TENANT = _READ.where(_table.c.tenant_id == bindparam("tenant_id"))


def _filtered(stmt: Select[Any], tenant_id: uuid.UUID | None, query: ListQuery) -> Select[Any]:
    if tenant_id is not None:
        stmt = stmt.where(SystemEvent.tenant_id == tenant_id)
    for name, value in query.filters.items():
        if name != RETRY_SCHEDULED:
            stmt = stmt.where(getattr(SystemEvent, name) == value)
        elif value == "true":
            # Spelled as the partial index ix_events_relay_failed is, so it can serve it.
            stmt = stmt.where(
                SystemEvent.status == EventStatus.FAILED, SystemEvent.next_attempt_at.is_not(None)
            )
        else:
            stmt = stmt.where(SystemEvent.next_attempt_at.is_(None))
    return stmt


def list_statement(
    tenant_id: uuid.UUID | None,
    query: ListQuery,
    *,
    after: tuple[datetime, uuid.UUID] | None = None,
    peek: int = 0,
) -> Select[Any]:
    """The SELECT of one page: newest first, id breaking ties so pages never overlap; ``peek``
    rows more than the page, to tell whether another page follows.

    Every filter combination the API offers has an ``ix_events_*`` index that serves this order.
    ``after`` (a cursor's position: created_at, id) reads the page below it by keyset, a range
    on that same index. Past the first page by number the page's keys are found first, on the
    index alone, and only its rows are read: an OFFSET over whole rows would read (and throw
    away) every row before the page.
    """
    order = (_table.c.created_at.desc(), _table.c.id.desc())
    limit = query.limit + peek
    if after is not None:
        below = tuple_(_table.c.created_at, _table.c.id) < tuple_(
            literal(after[0], _table.c.created_at.type), literal(after[1], _table.c.id.type)
        )
        stmt = _filtered(select(SystemEvent), tenant_id, query).where(below)
        return stmt.order_by(*order).limit(limit)
    if query.offset == 0:
        return _filtered(select(SystemEvent), tenant_id, query).order_by(*order).limit(limit)
    keys = (
        _filtered(select(_table.c.id, _table.c.created_at), tenant_id, query)
        .order_by(*order)
        .offset(query.offset)
        .limit(limit)
        .subquery("page")
    )
    return (
        select(SystemEvent)
        .join(keys, SystemEvent.id == keys.c.id)
        .order_by(keys.c.created_at.desc(), keys.c.id.desc())
    )


def count_statement(tenant_id: uuid.UUID | None, query: ListQuery) -> Select[int]:
    """The COUNT of every event the page's filters match."""
    return _filtered(select(func.count()).select_from(_table), tenant_id, query)


def list_page(
    session: Session, tenant_id: uuid.UUID | None, query: ListQuery
) -> tuple[Sequence[SystemEvent], int]:
    """A page (see :func:`list_statement`) and the count of all matches."""
    rows = session.scalars(list_statement(tenant_id, query)).all()
    if len(rows) < query.limit and (rows or query.page == 1):
        return rows, query.offset + len(rows)  # a short page ends the set: no COUNT needed
    return rows, count_events(session, tenant_id, query)


def stream_page(
    session: Session,
    tenant_id: uuid.UUID | None,
    query: ListQuery,
    batch: int,
    *,
    after: tuple[datetime, uuid.UUID] | None = None,
    peek: int = 0,
) -> Generator[SystemEvent, None, None]:
    """The rows of :func:`list_statement`, fetched ``batch`` at a time (a server-side cursor on
    PostgreSQL): a caller that stops early never reads, nor holds, the rest of the page."""
    stmt = list_statement(tenant_id, query, after=after, peek=peek)
    stmt = stmt.execution_options(yield_per=batch)
    result = session.scalars(stmt)
    try:
        yield from result
    finally:
        result.close()


def count_events(session: Session, tenant_id: uuid.UUID | None, query: ListQuery) -> int:
    """How many events the query's filters match, every page included: from the counts kept
    as data (:func:`tally`), or a COUNT where none are kept.

    ``retry_scheduled`` is no key of the counts: ``true`` is a COUNT of the few events with a
    retry to come (the partial index ``ix_events_relay_failed``), ``false`` the tally of the
    other filters less that COUNT."""
    flag = query.filters.get(RETRY_SCHEDULED)
    if flag is not None:
        rest = {name: value for name, value in query.filters.items() if name != RETRY_SCHEDULED}
        scheduled = ListQuery({**rest, RETRY_SCHEDULED: "true"})
        due = int(session.scalar(count_statement(tenant_id, scheduled)) or 0)
        if flag == "true":
            return due
        return count_events(session, tenant_id, ListQuery(rest)) - due
    tallied = tally(session, tenant_id, query.filters)
    if tallied is not None:
        return tallied
    return int(session.scalar(count_statement(tenant_id, query)) or 0)


def _created_between(
    stmt: Select[Any], created_after: datetime | None, created_before: datetime | None
) -> Select[Any]:
    if created_after is not None:
        stmt = stmt.where(_table.c.created_at >= created_after)
    if created_before is not None:
        stmt = stmt.where(_table.c.created_at < created_before)
    return stmt


def count_matching(
    session: Session,
    tenant_id: uuid.UUID | None,
    filters: Mapping[str, str],
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> int:
    """How many events a replay's filters match: the list's count (:func:`count_events`) when
    no time bounds it, else a COUNT over the filters' index."""
    query = ListQuery(filters)
    if created_after is None and created_before is None:
        return count_events(session, tenant_id, query)
    stmt = _created_between(count_statement(tenant_id, query), created_after, created_before)
    return int(session.scalar(stmt) or 0)


def lock_for_replay(
    session: Session,
    tenant_id: uuid.UUID | None,
    filters: Mapping[str, str],
    created_after: datetime | None,
    created_before: datetime | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[EventRow]:
    """Up to ``limit`` events matching a replay's filters, oldest first from just past
    ``after`` (the last of the previous batch: created_at, id), row-locked; events another
    transaction holds (a worker's attempt right now) are skipped (``SKIP LOCKED``). Read as
    :func:`claim_for_processing`'s, for ``bus.rules.save_changes``."""
    stmt = _filtered(select(_table), tenant_id, ListQuery(filters))
    stmt = _created_between(stmt, created_after, created_before)
    if after is not None:
        stmt = stmt.where(
            tuple_(_table.c.created_at, _table.c.id)
            > tuple_(
                literal(after[0], _table.c.created_at.type), literal(after[1], _table.c.id.type)
            )
        )
    stmt = (
        stmt.order_by(_table.c.created_at, _table.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [EventRow(**row) for row in session.connection().execute(stmt).mappings()]


@dataclass(frozen=True, slots=True)
class ModuleCounts:
    """Events of one target module by status; ``retry_scheduled`` of the failed ones have a
    retry to come."""

    target_module: str
    pending: int = 0
    processed: int = 0
    failed: int = 0
    retry_scheduled: int = 0
    oldest_pending_created_at: datetime | None = None


def stats_by_module(session: Session, tenant_id: uuid.UUID | None) -> list[ModuleCounts]:
    """Counts by target module and status in a tenant (every tenant when None), sorted by module.

    On PostgreSQL the counts are the counts kept as data (migration 0004) and each module's
    oldest pending event one seek of ``ix_events_tenant_target_status_created``: a dashboard
    polling it reads a few rows per key, not every event. Elsewhere one GROUP BY over that
    index. The retries to come are the few rows of the partial index ``ix_events_relay_failed``.
    """
    if session.get_bind().dialect.name == "postgresql":
        rows: Iterable[Any] = (
            session.execute(_STATS_EVERY_TENANT)
            if tenant_id is None
            else session.execute(_STATS_ONE_TENANT, {"tenant_id": tenant_id})
        )
    else:
        by_status = select(
            SystemEvent.target_module,
            SystemEvent.status,
            func.count(),
            func.min(SystemEvent.created_at),
        ).group_by(SystemEvent.target_module, SystemEvent.status)
        if tenant_id is not None:
            by_status = by_status.where(SystemEvent.tenant_id == tenant_id)
        rows = session.execute(by_status)
    counts: dict[str, dict[str, Any]] = {}
    for module, status, count, oldest in rows:
        entry = counts.setdefault(module, {})
        entry[str(status)] = int(count)
        if status == EventStatus.PENDING:
            entry["oldest_pending_created_at"] = oldest
    retries = (
        select(SystemEvent.target_module, func.count())
        .where(SystemEvent.status == EventStatus.FAILED, SystemEvent.next_attempt_at.is_not(None))
        .group_by(SystemEvent.target_module)
    )
    if tenant_id is not None:
        retries = retries.where(SystemEvent.tenant_id == tenant_id)
    for module, count in session.execute(retries):
        counts.setdefault(module, {})["retry_scheduled"] = int(count)
    return [ModuleCounts(module, **counts[module]) for module in sorted(counts)]


def _stats_statement(tenant_filter: str) -> TextualSelect:
    counted = " UNION ALL ".join(
        f"SELECT tenant_id, target_module, status, n FROM {table}{tenant_filter}"  # noqa: S608
        for table in ("event_counts", "event_count_changes")
    )
    return text(
        f"""
        WITH counted AS (
            SELECT tenant_id, target_module, status, sum(n) AS n FROM ({counted}) c
            GROUP BY tenant_id, target_module, status HAVING sum(n) <> 0
        )
        SELECT c.target_module, c.status, sum(c.n) AS n, min(o.oldest) AS oldest
        FROM counted c LEFT JOIN LATERAL (
            SELECT min(e.created_at) AS oldest FROM system_events e
            WHERE e.tenant_id = c.tenant_id AND e.target_module = c.target_module
              AND e.status = 'pending'
        ) o ON c.status = 'pending'
        GROUP BY c.target_module, c.status
        """  # noqa: S608 (table and column names only)
    ).columns(oldest=UTCDateTime())


_STATS_ONE_TENANT = _stats_statement(" WHERE tenant_id = :tenant_id")
_STATS_EVERY_TENANT = _stats_statement("")
"""PostgreSQL: the counts kept as data, and one seek per (tenant, module) for the oldest pending."""


@dataclass(frozen=True, slots=True)
class OutcomeMinute:
    """Handler attempts of one target module that finished in one minute, by outcome."""

    minute: datetime
    target_module: str
    processed: int = 0
    failed: int = 0
    lost: int = 0


def outcomes_by_minute(
    session: Session, tenant_id: uuid.UUID | None, since: datetime
) -> list[OutcomeMinute]:
    """Attempts finished at or after ``since`` (a whole minute), bucketed by minute and target
    module, oldest first; only minutes with an attempt.

    PostgreSQL reads the buckets the trigger of migration 0007 keeps (a row or two per minute
    and key once folded); elsewhere the attempts themselves are bucketed here."""
    buckets: dict[tuple[datetime, str], dict[str, int]] = {}
    if session.get_bind().dialect.name == "postgresql":
        minutes = event_outcome_minutes
        stmt = (
            select(
                minutes.c.minute, minutes.c.target_module, minutes.c.outcome, func.sum(minutes.c.n)
            )
            .where(minutes.c.minute >= since)
            .group_by(minutes.c.minute, minutes.c.target_module, minutes.c.outcome)
        )
        if tenant_id is not None:
            stmt = stmt.where(minutes.c.tenant_id == tenant_id)
        for minute, module, outcome, n in session.execute(stmt):
            buckets.setdefault((minute, module), {})[outcome] = int(n)
    else:
        attempts = event_attempts
        runs = (
            select(attempts.c.finished_at, SystemEvent.target_module, attempts.c.outcome)
            .join(SystemEvent, SystemEvent.id == attempts.c.event_id)
            .where(attempts.c.finished_at >= since)
        )
        if tenant_id is not None:
            runs = runs.where(SystemEvent.tenant_id == tenant_id)
        for finished_at, module, outcome in session.execute(runs):
            key = (finished_at.replace(second=0, microsecond=0), module)
            counts = buckets.setdefault(key, {})
            counts[outcome] = counts.get(outcome, 0) + 1
    return [
        OutcomeMinute(minute, module, **buckets[minute, module])
        for minute, module in sorted(buckets)
    ]


def fold_outcome_minutes(session: Session, closed_before: datetime, keep_after: datetime) -> int:
    """Fold each closed minute (before ``closed_before``) into one row per key, and delete the
    minutes before ``keep_after``; returns how many rows were taken. PostgreSQL only.

    Two relays folding at once cannot count a row twice: a row is summed only by the DELETE
    that removed it."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    purged = session.execute(_PURGE_MINUTES, {"keep_after": keep_after})
    folded = session.execute(
        _FOLD_MINUTES, {"closed_before": closed_before, "keep_after": keep_after}
    )
    return int(purged.rowcount or 0) + int(folded.scalar_one())  # type: ignore[attr-defined]


_MINUTE_KEY = "tenant_id, target_module, minute, outcome"
_PURGE_MINUTES = text("DELETE FROM event_outcome_minutes WHERE minute < :keep_after")
_FOLD_MINUTES = text(
    f"""
    WITH taken AS (
        DELETE FROM event_outcome_minutes
        WHERE minute >= :keep_after AND minute < :closed_before
          AND ({_MINUTE_KEY}) IN (
            SELECT {_MINUTE_KEY} FROM event_outcome_minutes
            WHERE minute >= :keep_after AND minute < :closed_before
            GROUP BY {_MINUTE_KEY} HAVING count(*) > 1
          )
        RETURNING {_MINUTE_KEY}, n
    ), folded AS (
        INSERT INTO event_outcome_minutes ({_MINUTE_KEY}, n)
        SELECT {_MINUTE_KEY}, sum(n) FROM taken GROUP BY {_MINUTE_KEY}
        RETURNING 1
    )
    SELECT count(*) FROM taken
    """  # noqa: S608 (the table's own column names)
)


@dataclass(frozen=True, slots=True)
class PendingModule:
    """A module with pending events: how many, and when the oldest was created."""

    target_module: str
    pending: int
    oldest_created_at: datetime


def pending_backlog(session: Session) -> list[PendingModule]:
    """Pending events per target module across every tenant, for the backlog gauges.

    Reads the partial index ``ix_events_relay_pending``: the pending rows only.
    """
    stmt = (
        select(SystemEvent.target_module, func.count(), func.min(SystemEvent.created_at))
        .where(SystemEvent.status == EventStatus.PENDING)
        .group_by(SystemEvent.target_module)
        .order_by(SystemEvent.target_module)
    )
    return [PendingModule(m, int(n), oldest) for m, n, oldest in session.execute(stmt)]


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
    row = session.connection().execute(stmt, {"event_id": event_id}).mappings().first()
    return None if row is None else EventRow(**row)


# Built once: a worker runs these for every event, and building a statement (and its cache key)
# costs more CPU than sending it. Executed on the session's connection, past the ORM.
_CLAIM = (
    select(_table).where(_table.c.id == bindparam("event_id")).with_for_update(skip_locked=True)
)
_CLAIM_WAITING = select(_table).where(_table.c.id == bindparam("event_id")).with_for_update()


@functools.cache
def _update_statement(columns: tuple[str, ...]) -> Update:
    """``UPDATE system_events SET <columns> WHERE id = :event_id``, built once per column set."""
    return (
        update(_table)
        .where(_table.c.id == bindparam("event_id"))
        .values({name: bindparam(f"new_{name}") for name in columns})
    )


def save_outcomes(
    session: Session, outcomes: Sequence[tuple[uuid.UUID, Mapping[str, Any]]]
) -> None:
    """Write status changes (each the same columns, ``bus.rules.OUTCOME_COLUMNS``) in ONE
    statement on PostgreSQL (``UPDATE … FROM unnest(…)``); one row is one plain UPDATE, and
    elsewhere an executemany of it."""
    if not outcomes:
        return
    connection = session.connection()
    columns = tuple(outcomes[0][1])
    if len(outcomes) > 1 and connection.dialect.name == "postgresql":
        params = {name: [_array_value(name, v[name]) for _, v in outcomes] for name in columns}
        params["id"] = [event_id for event_id, _ in outcomes]
        connection.execute(_unnest_update(columns), params)
        return
    rows = [
        {"event_id": event_id, **{f"new_{name}": v[name] for name in columns}}
        for event_id, v in outcomes
    ]
    connection.execute(_update_statement(columns), rows[0] if len(rows) == 1 else rows)


def claim_many(session: Session, event_ids: Sequence[uuid.UUID]) -> list[EventRow]:
    """Lock every event of a batch that no other transaction holds, in one statement
    (``FOR UPDATE SKIP LOCKED``), read as :func:`claim_for_processing`'s;
    the ones missing are locked elsewhere or gone (see :func:`existing`)."""
    result = session.connection().execute(_CLAIM_MANY, {"ids": list(event_ids)})
    return [EventRow(**row) for row in result.mappings()]


_CLAIM_MANY = (
    select(_table)
    .where(_table.c.id.in_(bindparam("ids", expanding=True)))
    .with_for_update(skip_locked=True)
)


def unprocessed_targets(session: Session, event_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The target module of each of these events that exists and is not processed; reads no
    lock."""
    stmt = select(_table.c.id, _table.c.target_module).where(
        _table.c.id.in_(list(event_ids)), _table.c.status != EventStatus.PROCESSED
    )
    return {event_id: module for event_id, module in session.execute(stmt)}


def existing(session: Session, event_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these ids name an event (in any tenant); reads no lock."""
    if not event_ids:
        return set()
    stmt = select(_table.c.id).where(_table.c.id.in_(list(event_ids)))
    return set(session.scalars(stmt))


def lock_event(
    session: Session, event_id: uuid.UUID, tenant_id: uuid.UUID | None
) -> EventRow | None:
    """An event in a tenant (any tenant when None), row-locked until the transaction ends,
    read as :func:`claim_for_processing`'s."""
    stmt = _CLAIM_WAITING if tenant_id is None else _LOCK_IN_TENANT
    params = {"event_id": event_id, "tenant_id": tenant_id}
    row = session.connection().execute(stmt, params).mappings().first()
    return None if row is None else EventRow(**row)


_LOCK_IN_TENANT = (
    select(_table)
    .where(_table.c.id == bindparam("event_id"), _table.c.tenant_id == bindparam("tenant_id"))
    .with_for_update()
)


def _limit_lock_wait(session: Session, seconds: float) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(func.set_config("lock_timeout", f"{max(1, round(seconds * 1000))}ms", True))
        )


def mark_unsent(session: Session, event_ids: Sequence[uuid.UUID]) -> None:
    """Undo an optimistic send stamp so the relay picks the events up at once."""
    if event_ids:
        session.execute(update(_table).where(_table.c.id.in_(event_ids)).values(dispatched_at=None))


@dataclass(frozen=True, slots=True)
class DueEvent:
    """An event the relay must send; ``resent`` when a send of it had been stamped before (its
    lease ran out with no outcome), rather than never made or undone after failing."""

    id: uuid.UUID
    target_module: str
    request_id: str | None
    resent: bool


def take_due_for_dispatch(
    session: Session,
    now: datetime,
    lease: timedelta,
    limit: int,
    hold: Collection[str] = (),
) -> list[DueEvent]:
    """Lock and stamp events that should be on a queue but may not be.

    Pending and never sent (or sent longer than a lease ago), or failed with a due retry and no
    send within the lease. SKIP LOCKED lets several relays share the work and passes over events
    a worker is processing right now. Events of the ``hold`` modules are sent only if never
    sent (their earlier copy may still be waiting: see :mod:`bus.relay`).
    """
    stale = now - lease
    expired = SystemEvent.dispatched_at < stale
    if hold:
        expired = and_(expired, SystemEvent.target_module.not_in(list(hold)))
    unsent = or_(SystemEvent.dispatched_at.is_(None), expired)
    rows: list[DueEvent] = []
    for due in (
        SystemEvent.status == EventStatus.PENDING,
        and_(
            SystemEvent.status == EventStatus.FAILED,
            SystemEvent.next_attempt_at.is_not(None),
            SystemEvent.next_attempt_at <= now,
        ),
    ):
        if len(rows) >= limit:
            break
        stmt = (
            select(
                SystemEvent.id,
                SystemEvent.target_module,
                SystemEvent.request_id,
                SystemEvent.dispatched_at.is_not(None).label("resent"),
            )
            .where(due, unsent)
            .order_by(SystemEvent.created_at)
            .limit(limit - len(rows))
            .with_for_update(skip_locked=True)
        )
        rows.extend(
            DueEvent(r.id, r.target_module, r.request_id, bool(r.resent))
            for r in session.execute(stmt)
        )
    if rows:
        session.execute(
            update(_table).where(_table.c.id.in_([r.id for r in rows])).values(dispatched_at=now)
        )
    return rows


def reset_dispatch_of_unfinished(session: Session) -> int:
    """Forget the send stamps of events still to run: pending ones and failed ones with a retry
    scheduled. For a broker that keeps messages in memory: after a restart it holds none, so
    the relay must send them all again at once rather than after its lease."""
    unfinished = or_(
        _table.c.status == EventStatus.PENDING,
        and_(_table.c.status == EventStatus.FAILED, _table.c.next_attempt_at.is_not(None)),
    )
    result = session.execute(
        update(_table)
        .where(unfinished, _table.c.dispatched_at.is_not(None))
        .values(dispatched_at=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- counts kept as data (PostgreSQL; migration 0004) --------------------------------------


def tally(session: Session, tenant_id: uuid.UUID | None, filters: Mapping[str, str]) -> int | None:
    """The exact number of events matching a list's filters, from the counts kept as data:
    the folded rows plus the changes not folded yet, read in one statement (one snapshot).
    None where no counts are kept (SQLite): count the events instead."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    parts = []
    for table in (event_counts, event_count_changes):
        stmt = select(table.c.n)
        if tenant_id is not None:
            stmt = stmt.where(table.c.tenant_id == tenant_id)
        for name, value in filters.items():
            stmt = stmt.where(table.c[name] == value)
        parts.append(stmt)
    both = union_all(*parts).subquery("counted")
    total = session.execute(select(func.coalesce(func.sum(both.c.n), 0))).scalar_one()
    return int(total)


def fold_counts(session: Session, limit: int = 10_000) -> int:
    """Fold up to ``limit`` appended count changes into one row per key; returns how many.

    Several relays may fold at once: each takes changes no other holds (SKIP LOCKED) and adds
    them to the folded rows in key order, so two folds never wait on each other in a cycle.
    """
    if session.get_bind().dialect.name != "postgresql":
        return 0
    result = session.execute(_FOLD, {"limit": limit})
    return int(result.scalar_one())


_KEY_LIST = ", ".join(COUNT_KEY)
_FOLD = text(
    f"""
    WITH taken AS (
        DELETE FROM event_count_changes
        WHERE id IN (
            SELECT id FROM event_count_changes ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
        )
        RETURNING {_KEY_LIST}, n
    ), folded AS (
        INSERT INTO event_counts ({_KEY_LIST}, n)
        SELECT {_KEY_LIST}, sum(n) FROM taken GROUP BY {_KEY_LIST} ORDER BY {_KEY_LIST}
        ON CONFLICT ({_KEY_LIST}) DO UPDATE SET n = event_counts.n + excluded.n
        RETURNING 1
    )
    SELECT count(*) FROM taken
    """  # noqa: S608 (the table's own column names)
)
