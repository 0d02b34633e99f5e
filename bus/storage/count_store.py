"""The SQL of the kept counts: the per-key counts a trigger appends and the relay folds,
the stats read from them, the outcome minutes, and each module's pending backlog.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    TextualSelect,
    func,
    select,
    text,
    union_all,
)

from bus.storage.models import (
    COUNT_KEY,
    RETRY_TO_COME,
    EventStatus,
    SystemEvent,
    UTCDateTime,
    event_attempts,
    event_count_changes,
    event_counts,
    event_outcome_minutes,
    event_queue,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


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
    oldest pending event one seek of the in-flight set (``event_queue``): a dashboard polling it
    reads a few rows per key, not every event. Elsewhere one GROUP BY over the events. The
    retries to come are counted in the in-flight set.
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
        select(event_queue.c.target_module, func.count())
        .where(RETRY_TO_COME)
        .group_by(event_queue.c.target_module)
    )
    if tenant_id is not None:
        retries = retries.where(event_queue.c.tenant_id == tenant_id)
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
            SELECT min(e.created_at) AS oldest FROM event_queue e
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

    Reads the in-flight set: the unfinished events only.
    """
    stmt = (
        select(event_queue.c.target_module, func.count(), func.min(event_queue.c.created_at))
        .where(event_queue.c.status == EventStatus.PENDING)
        .group_by(event_queue.c.target_module)
        .order_by(event_queue.c.target_module)
    )
    return [PendingModule(m, int(n), oldest) for m, n, oldest in session.execute(stmt)]


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
