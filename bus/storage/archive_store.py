"""Every statement of the archive (``EVENTBUS_ARCHIVE_URL``, :mod:`bus.maintenance.archive`):
a partition's events and their attempts read in batches before it is dropped, archived rows
inserted back, and the restored partitions the retention leaves alone for a while.

PostgreSQL only: SQLite (``eventbus dev``) has no partitions to drop or to restore.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Table, TextClause, delete, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bus.storage.models import EVENT_COLUMNS, SystemEvent, event_attempts, restored_days
from bus.storage.partitions import DEFAULT

READ_BATCH = 2000
"""Events read per statement from a partition being archived: the memory a pass holds, the
same for a day of a thousand events or of millions."""

ATTEMPT_COLUMNS: tuple[str, ...] = tuple(c.name for c in event_attempts.c if c.name != "event_id")
"""An archived attempt's fields (its event is the line that holds it)."""

_COLUMNS = ", ".join(EVENT_COLUMNS)
_EVENTS: Table = SystemEvent.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as archived: every column of ``system_events`` and its attempts, oldest
    first (each without ``event_id``)."""

    values: dict[str, Any]
    attempts: list[dict[str, Any]]


def read_partition(
    connection: Connection, name: str, batch: int = READ_BATCH
) -> Iterator[list[StoredEvent]]:
    """The events of partition ``name`` with their attempts, in (created_at, id) order, a
    batch at a time: keyset pages on the partition's (created_at, id) index, so no statement
    reads more than ``batch`` events, and nothing is held from one batch to the next. The
    caller's lock (the drop's SHARE lock) keeps the partition still between batches."""
    first = text(f"SELECT {_COLUMNS} FROM {name} ORDER BY created_at, id LIMIT :n")  # noqa: S608
    after = text(
        f"SELECT {_COLUMNS} FROM {name} WHERE (created_at, id) > (:created_at, :id) "  # noqa: S608
        "ORDER BY created_at, id LIMIT :n"
    )
    last: dict[str, Any] | None = None
    while True:
        params: dict[str, Any] = {"n": batch}
        if last is not None:
            params.update(created_at=last["created_at"], id=last["id"])
        found = connection.execute(after if last else first, params)
        rows = [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in found]
        if not rows:
            return
        attempts = _attempts_of(connection, [row["id"] for row in rows])
        yield [StoredEvent(row, attempts.get(row["id"], [])) for row in rows]
        if len(rows) < batch:
            return
        last = rows[-1]


def _attempts_of(
    connection: Connection, event_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    found: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in connection.execute(_ATTEMPTS_OF, {"ids": list(event_ids)}):
        found.setdefault(row[0], []).append(dict(zip(ATTEMPT_COLUMNS, row[1:], strict=True)))
    return found


_ATTEMPTS_OF = text(
    f"SELECT event_id, {', '.join(ATTEMPT_COLUMNS)} FROM event_attempts "  # noqa: S608
    "WHERE event_id = ANY(CAST(:ids AS uuid[])) ORDER BY event_id, attempt"
)


def insert_events(connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Archived events back into the history, through the parent table (so each lands in its
    day's partition and the count triggers count it); one already stored is left alone
    (``ON CONFLICT DO NOTHING`` on the key (id, created_at)). ONE statement per batch, its
    text the same for any number of rows (``unnest`` of an array per column). Returns how
    many were new."""
    if not rows:
        return 0
    params = {
        name: [Jsonb(row[name]) if name == "event_data" else row[name] for row in rows]
        for name in EVENT_COLUMNS
    }
    return len(connection.execute(_INSERT_EVENTS, params).all())


def insert_attempts(connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Archived attempts (each with its ``event_id``) back, numbered as they were; one whose
    (event_id, attempt) is stored already is left alone. The archived ``id`` is not restored:
    the table's identity gives a new one, so an old number never meets the sequence later."""
    if not rows:
        return 0
    params = {name: [row[name] for row in rows] for name in _ATTEMPT_INSERTED}
    return len(connection.execute(_INSERT_ATTEMPTS, params).all())


def _unnest_insert(table: Table, columns: Sequence[str]) -> TextClause:
    arrays = ", ".join(
        f"CAST(:{name} AS {table.c[name].type.compile(dialect=_PG)}[])" for name in columns
    )
    names = ", ".join(columns)
    return text(
        f"INSERT INTO {table.name} ({names}) SELECT {names} FROM unnest({arrays}) "  # noqa: S608
        f"AS v({names}) ON CONFLICT DO NOTHING RETURNING 1"
    )


_PG = postgresql.dialect()  # type: ignore[no-untyped-call]
_ATTEMPT_INSERTED = ("event_id", *(c for c in ATTEMPT_COLUMNS if c != "id"))
# Built from the tables' own column names, never from input.
_INSERT_EVENTS = _unnest_insert(_EVENTS, EVENT_COLUMNS)
_INSERT_ATTEMPTS = _unnest_insert(event_attempts, _ATTEMPT_INSERTED)


def keep(connection: Connection, names: Sequence[str], now: datetime, until: datetime) -> None:
    """Record restored partitions, each kept from the retention until ``until`` (a later
    restore of the same one moves it); entries whose time has passed are forgotten."""
    connection.execute(delete(restored_days).where(restored_days.c.keep_until <= now))
    for name in names:
        stmt = pg_insert(restored_days).values(partition=name, restored_at=now, keep_until=until)
        connection.execute(
            stmt.on_conflict_do_update(
                index_elements=[restored_days.c.partition],
                set_={"restored_at": now, "keep_until": until},
            )
        )


def kept(connection: Connection, now: datetime) -> set[str]:
    """The restored partitions the retention must still leave alone at ``now``."""
    stmt = select(restored_days.c.partition).where(restored_days.c.keep_until > now)
    return set(connection.execute(stmt).scalars())


def stray_days(connection: Connection, before: datetime, limit: int = 31) -> list[date]:
    """The (UTC) days of events older than ``before`` waiting in the default partition, oldest
    first: with an archive, each gets a partition of its own (which takes its rows in), to be
    archived and dropped like any day, instead of being deleted unarchived."""
    found = connection.execute(
        text(
            f"SELECT DISTINCT CAST(created_at AT TIME ZONE 'UTC' AS date) AS day FROM {DEFAULT} "  # noqa: S608
            "WHERE created_at < :before ORDER BY day LIMIT :n"
        ),
        {"before": before, "n": limit},
    )
    return list(found.scalars())
