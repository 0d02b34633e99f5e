"""Each event's attempt history: the ``event_attempts`` table and every statement on it.

An entry is appended where an outcome is saved (:func:`bus.events.rules.save_changes`), in the same
statement batch and transaction: a worker's batch delivery appends all its entries in ONE
``INSERT`` and commits once, as before. Entries are numbered per event from 1 by that INSERT
itself (the highest number so far plus one): the writer holds the event's row lock (a worker's
claim, a ``PUT``'s lock), so no two writers number one event at once, and a unique index makes
sure of it.

* ``worker`` entries: ``processed`` or ``failed`` for a handler run, ``lost`` for a run that
  died (counted by the delivery that follows it: :func:`bus.delivery.attempts.count_in_advance`);
* ``api`` entries: a ``PUT`` that changed the status to processed or failed (a ``PUT`` to
  pending records none: the replay's own run is recorded by the worker).

Rows older than ``EVENTBUS_ATTEMPTS_RETENTION_DAYS`` are purged by the relay (:func:`purge`).
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, TextClause, Uuid, bindparam, delete, func, select, text

from bus.events.schemas import format_timestamp
from bus.storage.models import UTCDateTime, event_attempts

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_table: Table = event_attempts


class Outcome(StrEnum):
    PROCESSED = "processed"
    FAILED = "failed"
    LOST = "lost"


class Source(StrEnum):
    WORKER = "worker"
    API = "api"


@dataclass(frozen=True, slots=True)
class Entry:
    """One attempt to append; its number is given when it is written.

    ``started_at`` is None when the bus did not see the run start (a lost run, an outcome
    reported by ``PUT``); ``worker`` is ``hostname/pid`` of the process that ran the handler
    (or answered the ``PUT``), None for a lost run, whose process is gone.
    """

    event_id: uuid.UUID
    outcome: Outcome
    finished_at: datetime
    started_at: datetime | None = None
    error_message: str | None = None
    worker: str | None = None
    source: Source = Source.WORKER


@functools.cache
def _hostname() -> str:
    return socket.gethostname()


def this_process() -> str:
    """``hostname/pid`` of the running process (a pool child's own pid after a fork)."""
    return f"{_hostname()}/{os.getpid()}"


_COLUMNS = ("event_id", "started_at", "finished_at", "outcome", "error_message", "worker", "source")
_NAMES = ", ".join(_COLUMNS)
_NEXT_NUMBER = (
    "COALESCE((SELECT max(a.attempt) FROM event_attempts a WHERE a.event_id = v.event_id), 0)"
)

# Built from the table's own column names, never from input (S608).
_INSERT_MANY = text(
    f"INSERT INTO event_attempts (attempt, {_NAMES}) "  # noqa: S608
    f"SELECT {_NEXT_NUMBER} + row_number() OVER (PARTITION BY v.event_id ORDER BY v.n), "
    f"{', '.join(f'v.{c}' for c in _COLUMNS)} "
    "FROM unnest(CAST(:event_id AS UUID[]), CAST(:started_at AS TIMESTAMPTZ[]), "
    "CAST(:finished_at AS TIMESTAMPTZ[]), CAST(:outcome AS VARCHAR[]), "
    "CAST(:error_message AS TEXT[]), CAST(:worker AS VARCHAR[]), CAST(:source AS VARCHAR[])) "
    f"WITH ORDINALITY AS v({_NAMES}, n)"
)
"""PostgreSQL: every entry in one statement, whatever their number (parsed and planned once)."""


def _insert_one() -> TextClause:
    values = ", ".join(f":{c}" for c in _COLUMNS)
    return text(
        f"INSERT INTO event_attempts (attempt, {_NAMES}) "  # noqa: S608
        "SELECT COALESCE(max(attempt), 0) + 1, "
        f"{values} FROM event_attempts WHERE event_id = :event_id"
    ).bindparams(
        bindparam("event_id", type_=Uuid()),
        bindparam("started_at", type_=UTCDateTime()),
        bindparam("finished_at", type_=UTCDateTime()),
    )


_INSERT_ONE = _insert_one()
"""Elsewhere (SQLite, ``eventbus dev``): one row per execution, executed many."""


def record(session: Session, entries: Sequence[Entry]) -> None:
    """Append ``entries`` in the session's transaction: ONE statement on PostgreSQL."""
    if not entries:
        return
    connection = session.connection()
    rows = [{name: getattr(entry, name) for name in _COLUMNS} for entry in entries]
    if connection.dialect.name != "postgresql":
        connection.execute(_INSERT_ONE, rows)
        return
    params = {name: [_plain(row[name]) for row in rows] for name in _COLUMNS}
    connection.execute(_INSERT_MANY, params)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, StrEnum) else value


SHOWN_ATTEMPTS = 100
"""The entries ``GET /system/events/{id}`` shows, the last ones: a history has no length cap
(3,600 ``PUT``s of one event made a 21 MB answer, which /ui polls), its retention is in days."""
SHOWN_ERROR = 1000
"""Characters of an entry's error_message shown (as a worker's summary is cut): a ``PUT`` may
store 10,000, and the event object still carries its last error whole."""


@dataclass(frozen=True, slots=True)
class Shown:
    """The end of an event's history, as the API shows it, and how long the history is."""

    entries: list[dict[str, Any]]
    total: int


_READ = (
    select(
        _table.c.attempt,
        _table.c.started_at,
        _table.c.finished_at,
        _table.c.outcome,
        # One character more than is shown, to know it was cut; the rest is never read.
        func.substr(_table.c.error_message, 1, SHOWN_ERROR + 1).label("error_message"),
        _table.c.worker,
        _table.c.source,
        func.count().over().label("total"),  # before the LIMIT: every entry of the event
    )
    .where(_table.c.event_id == bindparam("event_id"))
    .order_by(_table.c.attempt.desc())
    .limit(SHOWN_ATTEMPTS)
)


def attempts_of(session: Session, event_id: uuid.UUID) -> list[dict[str, Any]]:
    """An event's history as the API shows it, oldest first (its last entries: :func:`last`)."""
    return last(session, event_id).entries


def last(session: Session, event_id: uuid.UUID) -> Shown:
    """An event's last ``SHOWN_ATTEMPTS`` entries, oldest first, each error cut to
    ``SHOWN_ERROR`` characters (the last one ``…``), and how many entries it has."""
    rows = list(session.connection().execute(_READ, {"event_id": event_id}).mappings())
    entries = [
        {
            "attempt": row["attempt"],
            "started_at": format_timestamp(row["started_at"]),
            "finished_at": format_timestamp(row["finished_at"]),
            "outcome": row["outcome"],
            "error_message": _cut(row["error_message"]),
            "worker": row["worker"],
            "source": row["source"],
        }
        for row in reversed(rows)
    ]
    return Shown(entries, int(rows[0]["total"]) if rows else 0)


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= SHOWN_ERROR:
        return text
    return text[: SHOWN_ERROR - 1] + "…"


PURGE_BATCH = 10_000
"""Entries deleted per maintenance pass at most: a pass stays short whatever piled up."""


def purge(session: Session, before: datetime, limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` entries finished before ``before``; returns how many.

    Oldest first, on ``ix_event_attempts_finished_at``; several relays may purge at once (SKIP
    LOCKED on PostgreSQL)."""
    oldest = (
        select(_table.c.id)
        .where(_table.c.finished_at < before)
        .order_by(_table.c.finished_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(delete(_table).where(_table.c.id.in_(oldest.scalar_subquery())))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
