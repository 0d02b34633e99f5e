"""Every SQL statement the bus runs, named for its intent."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from bus.models import EventStatus, SystemEvent
from bus.schemas import ListQuery

_table: Table = SystemEvent.__table__  # type: ignore[assignment]


_INSERT = insert(_table)


def insert_event(session: Session, values: dict[str, Any]) -> None:
    """One INSERT through Core, on the session's connection: the ORM's unit of work (and its
    execution layer) costs more than the row."""
    session.connection().execute(_INSERT, values)


def get_event(
    session: Session, event_id: uuid.UUID, tenant_id: uuid.UUID | None, *, lock: bool = False
) -> SystemEvent | None:
    """An event in a tenant (any tenant when ``tenant_id`` is None), optionally row-locked."""
    stmt = select(SystemEvent).where(SystemEvent.id == event_id)
    if tenant_id is not None:
        stmt = stmt.where(SystemEvent.tenant_id == tenant_id)
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).one_or_none()


def _filtered(stmt: Select[Any], tenant_id: uuid.UUID | None, query: ListQuery) -> Select[Any]:
    if tenant_id is not None:
        stmt = stmt.where(SystemEvent.tenant_id == tenant_id)
    for name, value in query.filters.items():
        stmt = stmt.where(getattr(SystemEvent, name) == value)
    return stmt


def list_statement(tenant_id: uuid.UUID | None, query: ListQuery) -> Select[Any]:
    """The SELECT of one page: newest first, id breaking ties so pages never overlap.

    Every filter combination the API offers has an ``ix_events_*`` index that serves this order.
    Past the first page the page's keys are found first, on the index alone, and only its rows
    are read: an OFFSET over whole rows would read (and throw away) every row before the page.
    """
    order = (_table.c.created_at.desc(), _table.c.id.desc())
    if query.offset == 0:
        return _filtered(select(SystemEvent), tenant_id, query).order_by(*order).limit(query.limit)
    keys = (
        _filtered(select(_table.c.id, _table.c.created_at), tenant_id, query)
        .order_by(*order)
        .offset(query.offset)
        .limit(query.limit)
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
    total = session.scalar(count_statement(tenant_id, query))
    return rows, int(total or 0)


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

    The GROUP BY reads ``ix_events_tenant_target_status_created`` only; the retries to come are
    the few rows of the partial index ``ix_events_relay_failed``.
    """
    by_status = select(
        SystemEvent.target_module,
        SystemEvent.status,
        func.count(),
        func.min(SystemEvent.created_at),
    ).group_by(SystemEvent.target_module, SystemEvent.status)
    retries = (
        select(SystemEvent.target_module, func.count())
        .where(SystemEvent.status == EventStatus.FAILED, SystemEvent.next_attempt_at.is_not(None))
        .group_by(SystemEvent.target_module)
    )
    if tenant_id is not None:
        by_status = by_status.where(SystemEvent.tenant_id == tenant_id)
        retries = retries.where(SystemEvent.tenant_id == tenant_id)
    counts: dict[str, dict[str, Any]] = {}
    for module, status, count, oldest in session.execute(by_status):
        entry = counts.setdefault(module, {})
        entry[str(status)] = int(count)
        if status == EventStatus.PENDING:
            entry["oldest_pending_created_at"] = oldest
    for module, count in session.execute(retries):
        counts.setdefault(module, {})["retry_scheduled"] = int(count)
    return [ModuleCounts(module, **counts[module]) for module in sorted(counts)]


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
) -> SystemEvent | None:
    """Lock the event for one attempt; None if another transaction holds it or it is gone.

    The row lock is the claim: it lasts until the attempt's transaction ends, and a crash
    releases it by rolling everything back. With ``wait_seconds`` the lock is waited for
    instead of skipped (raising ``OperationalError`` when the wait runs out): a delivery that
    follows a crashed one must not mistake the crash's rollback, still on its way, for a
    delivery running elsewhere.

    The row is read through Core into a detached :class:`SystemEvent` (no identity map, no unit
    of work: a worker pays for one event thousands of times a second); the attempt's outcome
    goes back with :func:`save_outcome`.
    """
    if wait_seconds is None:
        stmt = _CLAIM
    else:
        _limit_lock_wait(session, wait_seconds)
        stmt = _CLAIM_WAITING
    row = session.connection().execute(stmt, {"event_id": event_id}).mappings().first()
    return None if row is None else SystemEvent(**row)


# Built once: a worker runs these for every event, and building a statement (and its cache key)
# costs more CPU than sending it. Executed on the session's connection, past the ORM.
_CLAIM = (
    select(_table).where(_table.c.id == bindparam("event_id")).with_for_update(skip_locked=True)
)
_CLAIM_WAITING = select(_table).where(_table.c.id == bindparam("event_id")).with_for_update()
_OUTCOME = (
    "status",
    "retry_count",
    "processed_at",
    "error_message",
    "next_attempt_at",
    "dispatched_at",
)
_SAVE_OUTCOME = (
    update(_table)
    .where(_table.c.id == bindparam("event_id"))
    .values({name: bindparam(f"new_{name}") for name in _OUTCOME})
)


def save_outcome(session: Session, event: SystemEvent) -> None:
    """Write an attempt's status columns (see :func:`claim_for_processing`) in one UPDATE."""
    params: dict[str, Any] = {f"new_{name}": getattr(event, name) for name in _OUTCOME}
    params["event_id"] = event.id
    session.connection().execute(_SAVE_OUTCOME, params)


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
    session: Session, now: datetime, lease: timedelta, limit: int
) -> list[DueEvent]:
    """Lock and stamp events that should be on a queue but may not be.

    Pending and never sent (or sent longer than a lease ago), or failed with a due retry and no
    send within the lease. SKIP LOCKED lets several relays share the work and passes over events
    a worker is processing right now.
    """
    stale = now - lease
    unsent = or_(SystemEvent.dispatched_at.is_(None), SystemEvent.dispatched_at < stale)
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
