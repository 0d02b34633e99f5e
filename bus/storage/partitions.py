"""The history's partitions (PostgreSQL): a day of ``created_at`` each, made ahead of time,
dropped whole when older than the retention.

``system_events`` is partitioned by RANGE (``created_at``), one partition a day
(``system_events_p20261203``, UTC days), plus:

- ``system_events_default``, the DEFAULT partition: a publish never fails for want of a day's
  partition (the maintenance fell behind, or an outbox's clock is off); the next pass moves
  its rows into the day's partition when it makes it.
- ``system_events_legacy``, only on a database that held events before migration 0008: the
  old table attached whole, ``FROM (MINVALUE) TO (<the cut-over midnight>)``.

A day, not an hour or a week: a day is about 8.6M rows at 100 events/s, small enough to drop
in one statement and to vacuum, and 30 days of retention are ~37 partitions, few enough that
a statement which cannot be pruned (a listing across the days) still plans quickly.

Retention drops a partition only when no event in it is still in flight (pending, or failed
with a retry to come): such an event keeps its day until it finishes, so nothing in flight is
ever dropped. The counts (``event_counts``) lose the dropped rows in the same transaction, so
``total`` stays exact. SQLite (``eventbus dev``) has one table: retention DELETEs finished rows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Connection, bindparam, text

from bus.storage.models import COUNT_KEY, FILLFACTOR, UTCDateTime

log = logging.getLogger(__name__)

PARENT = "system_events"
DEFAULT = "system_events_default"
LEGACY = "system_events_legacy"

IN_FLIGHT = "(status = 'pending' OR (status = 'failed' AND next_attempt_at IS NOT NULL))"
"""An event a worker will still run, said on the history's own columns (no index serves it:
a drop asks the in-flight set, ``event_queue``, instead)."""

LOCK_TIMEOUT = "2s"
"""How long a drop or a made partition waits for the lock on the history; past it, the pass
gives up and the next one tries again (statements queue behind a waiting lock)."""

_KEY = ", ".join(COUNT_KEY)
_DAY = re.compile(r"^system_events_p(\d{8})$")
_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lo: datetime | None
    """Inclusive; None for MINVALUE."""
    hi: datetime | None
    """Exclusive; None for MAXVALUE. The default partition has neither."""
    default: bool = False


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def day_name(day: date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


DAY = timedelta(days=1)


def span_start(at: datetime, span: timedelta) -> datetime:
    """The start of the span holding ``at``; spans divide a UTC day evenly from midnight."""
    day = midnight(at.astimezone(UTC).date())
    return day + (at - day) // span * span


def span_name(lo: datetime, span: timedelta) -> str:
    """``system_events_p20261203`` for a day, ``system_events_p20261203_1605`` for less."""
    if span == DAY:
        return day_name(lo.date())
    return f"{PARENT}_p{lo:%Y%m%d_%H%M}"


def is_partitioned(connection: Connection) -> bool:
    if connection.dialect.name != "postgresql":
        return False
    found = connection.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)"), {"name": PARENT}
    ).scalar()
    return found == "p"


def partitions(connection: Connection) -> list[Partition]:
    """The history's partitions, oldest first (the default last)."""
    rows = connection.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": PARENT},
    )
    found = []
    for name, bound in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, default=True))
            continue
        match = _BOUND.match(bound)
        if match is None:  # pragma: no cover - a partition someone made by hand
            log.warning("partition %s has a bound this code does not read: %s", name, bound)
            continue
        found.append(Partition(name, _bound(match[1]), _bound(match[2])))
    return sorted(found, key=lambda p: (p.default, p.lo or datetime.min.replace(tzinfo=UTC)))


def _bound(value: str) -> datetime | None:
    if value in ("MINVALUE", "MAXVALUE"):
        return None
    return datetime.fromisoformat(value.strip("'")).astimezone(UTC)


def make_day(connection: Connection, day: date, fillfactor: int = FILLFACTOR) -> bool:
    """Make the partition of ``day`` (see :func:`make_span`)."""
    return make_span(connection, midnight(day), DAY, fillfactor)


def make_span(
    connection: Connection, lo: datetime, span: timedelta, fillfactor: int = FILLFACTOR
) -> bool:
    """Make the partition of ``[lo, lo + span)`` unless a partition covers part of it already;
    rows of that span waiting in the default partition move into it. True when it was made.
    Its pages are filled to ``fillfactor`` percent by inserts (see ``FILLFACTOR``)."""
    hi = lo + span
    for p in partitions(connection):
        if not p.default and (p.lo is None or p.lo < hi) and (p.hi is None or p.hi > lo):
            return False
    name = span_name(lo, span)
    bounds = {"lo": lo, "hi": hi}
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    waiting = connection.execute(
        text(f"SELECT 1 FROM {DEFAULT} WHERE created_at >= :lo AND created_at < :hi LIMIT 1"),  # noqa: S608
        bounds,
    ).first()
    values = f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
    storage = f"WITH (fillfactor = {int(fillfactor)})"
    if waiting is None:
        connection.execute(text(f"CREATE TABLE {name} PARTITION OF {PARENT} {values} {storage}"))
        return True
    # Rows of that day sit in the default partition: a partition cannot be made over them, so
    # they move into a table made for them, which is then attached (counts unchanged: the
    # rows stay, and no statement on the parent ran).
    connection.execute(
        text(
            f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            f"{storage}"
        )
    )
    moved = connection.execute(
        text(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE created_at >= :lo AND created_at < :hi "  # noqa: S608
            f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        ),
        bounds,
    ).rowcount
    connection.execute(text(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} {values}"))
    log.info("partition %s made; %d events moved in from %s", name, moved, DEFAULT)
    return True


def expired(connection: Connection, before: datetime) -> list[Partition]:
    """Partitions whose every row is older than ``before`` (the default partition never)."""
    return [p for p in partitions(connection) if p.hi is not None and p.hi <= before]


def drop(
    connection: Connection, partition: Partition, before: Callable[[], object] | None = None
) -> tuple[int, int]:
    """Drop one partition and take its rows out of the counts and the in-flight set, in the
    caller's transaction, unless an event in it is still in flight. Returns (events dropped,
    events in flight): one of the two is 0. The SHARE lock, taken first, keeps every write off
    the partition from the look to the drop (an event of it changes only with its row); the
    in-flight look reads ``event_queue``, whose rows of the partition's span are then only
    failed events with no retry to come, which leave with it.

    ``before`` runs once nothing is in flight, under that lock, before anything changes (the
    archive writes the partition out there); if it raises, nothing is dropped."""
    name = partition.name
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    connection.execute(text(f"LOCK TABLE {name} IN SHARE MODE"))
    # The legacy partition runs from MINVALUE: no lower bound
    span = "created_at < :hi" if partition.lo is None else "created_at >= :lo AND created_at < :hi"
    bounds = {"lo": partition.lo, "hi": partition.hi}
    waiting = connection.execute(
        text(f"SELECT count(*) FROM event_queue WHERE {span} AND due_at IS NOT NULL"),  # noqa: S608
        bounds,
    ).scalar_one()
    if waiting:
        return 0, int(waiting)
    if before is not None:
        before()
    gone = connection.execute(
        text(
            f"WITH gone AS (SELECT {_KEY}, count(*) AS n FROM {name} GROUP BY {_KEY}), "  # noqa: S608
            f"noted AS (INSERT INTO event_count_changes ({_KEY}, n) "
            f"SELECT {_KEY}, -n FROM gone) SELECT coalesce(sum(n), 0) FROM gone"
        )
    ).scalar_one()
    connection.execute(text(f"DELETE FROM event_queue WHERE {span}"), bounds)  # noqa: S608
    connection.execute(text(f"DROP TABLE {name}"))
    return int(gone), 0


def delete_finished(connection: Connection, table: str, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` finished events older than ``before`` from one table: the
    default partition on PostgreSQL (its counts and in-flight rows, failed events with no
    retry, taken out as a drop's are: no trigger of the parent sees a statement on a
    partition), the whole history on SQLite (whose row triggers do that)."""
    params = {"before": before, "limit": limit}
    chosen = (
        f"SELECT id FROM {table} WHERE created_at < :before AND NOT {IN_FLIGHT} "  # noqa: S608
        "ORDER BY created_at LIMIT :limit"
    )
    # SQLite keeps created_at as naive UTC text: the bound goes through the column's type
    typed = [bindparam("before", type_=UTCDateTime())]
    if connection.dialect.name != "postgresql":
        return int(
            connection.execute(
                text(f"DELETE FROM {table} WHERE id IN ({chosen})").bindparams(*typed),  # noqa: S608
                params,
            ).rowcount
        )
    return int(
        connection.execute(
            text(
                f"WITH gone AS (DELETE FROM {table} WHERE id IN ({chosen}) "  # noqa: S608
                f"RETURNING id, {_KEY}), "
                f"noted AS (INSERT INTO event_count_changes ({_KEY}, n) "
                f"SELECT {_KEY}, -count(*) FROM gone GROUP BY {_KEY}), "
                "unqueued AS (DELETE FROM event_queue WHERE id IN (SELECT id FROM gone)) "
                "SELECT count(*) FROM gone"
            ).bindparams(*typed),
            params,
        ).scalar_one()
    )
