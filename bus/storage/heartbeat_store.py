"""Which modules have a live worker: the SQL of the ``worker_heartbeats`` table.

Each worker's main process records, every EVENTBUS_WORKER_HEARTBEAT_SECONDS, one row per module
it serves (a few upserts per interval, never per event). A module is *served* while one of its
rows is younger than :data:`LIVE_BEATS` intervals. Where queue lengths cannot be read
(RabbitMQ), the relay re-sends an event whose lease ran out only to a served module
(:mod:`bus.maintenance.resend`); everywhere, :func:`pending_without_live_worker` says which modules
have
events waiting for a worker that does not run.

Kept apart from ``bus/storage/event_store.py``: it is a table of workers, not of events, with its
own
small set of statements, and the events' hot paths never touch it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Select, Table, and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bus.storage.models import EventStatus, WorkerHeartbeat, event_queue

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_table: Table = WorkerHeartbeat.__table__  # type: ignore[assignment]
_queue: Table = event_queue  # the in-flight set: every event not processed

LIVE_BEATS = 3
"""Intervals without a heartbeat after which a worker counts as gone (one late beat, under
load or a slow database, must not make a module look unserved)."""
FORGET_AFTER = timedelta(hours=1)
"""Rows older than this are deleted by the next beat for the module: a worker's name holds its
PID, so every restart adds a row and the table must not grow with restarts."""


def live_since(now: datetime, interval_seconds: float) -> datetime:
    """The oldest heartbeat that still counts as a live worker."""
    return now - timedelta(seconds=interval_seconds * LIVE_BEATS)


def beat(
    session: Session, queue_prefix: str, modules: Iterable[str], worker: str, now: datetime
) -> None:
    """Record that ``worker`` serves ``modules`` now, and forget long-gone workers' rows."""
    names = sorted(set(modules))
    rows = [
        {"queue_prefix": queue_prefix, "module": m, "worker": worker, "seen_at": now} for m in names
    ]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(_table).values(rows)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["queue_prefix", "module", "worker"],
                set_={"seen_at": stmt.excluded.seen_at},
            )
        )
    else:  # portable fallback: update, then insert what was not there
        for row in rows:
            key = and_(
                _table.c.queue_prefix == queue_prefix,
                _table.c.module == row["module"],
                _table.c.worker == worker,
            )
            result = session.execute(update(_table).where(key).values(seen_at=now))
            if not result.rowcount:  # type: ignore[attr-defined]
                session.execute(_table.insert().values(row))
    session.execute(
        delete(_table).where(
            _table.c.queue_prefix == queue_prefix,
            _table.c.module.in_(names),
            _table.c.seen_at < now - FORGET_AFTER,
        )
    )


def forget(session: Session, queue_prefix: str, worker: str) -> None:
    """A worker stopping cleanly: its modules are no longer served by it."""
    session.execute(
        delete(_table).where(_table.c.queue_prefix == queue_prefix, _table.c.worker == worker)
    )


def _served(queue_prefix: str, since: datetime) -> Select[tuple[str]]:
    return (
        select(_table.c.module)
        .where(_table.c.queue_prefix == queue_prefix, _table.c.seen_at >= since)
        .distinct()
    )


def live_workers(session: Session, since: datetime) -> set[str]:
    """Workers (Celery node names) with a heartbeat at or after ``since``, of any bus."""
    stmt = select(_table.c.worker).where(_table.c.seen_at >= since)
    return set(session.scalars(stmt.distinct()))


def live_modules(session: Session, queue_prefix: str, since: datetime) -> set[str]:
    """Modules with a heartbeat at or after ``since``."""
    return set(session.scalars(_served(queue_prefix, since)))


@dataclass(frozen=True, slots=True)
class UnservedModule:
    """A module with pending events and no live worker: its events wait for one."""

    target_module: str
    pending: int
    oldest_created_at: datetime


def pending_without_live_worker(
    session: Session, queue_prefix: str, since: datetime
) -> list[UnservedModule]:
    """Modules with pending events (every tenant) and no heartbeat at or after ``since``.

    For stats and logs: what an operator must start a worker for (or what was published to a
    module nobody runs). Reads the in-flight set.
    """
    stmt = (
        select(_queue.c.target_module, func.count(), func.min(_queue.c.created_at))
        .where(_queue.c.status == EventStatus.PENDING)
        .where(_queue.c.target_module.not_in(_served(queue_prefix, since)))
        .group_by(_queue.c.target_module)
        .order_by(_queue.c.target_module)
    )
    return [UnservedModule(m, int(n), oldest) for m, n, oldest in session.execute(stmt)]
