"""the history partitioned by day of created_at, converted online

Create Date: 2026-12-03 17:00:00

PostgreSQL only (SQLite keeps one table). ``system_events`` becomes a table partitioned by
RANGE (``created_at``): a partition a day, a DEFAULT partition, and the old table attached
whole as ``system_events_legacy`` when it holds events (``bus.storage.partitions``).

Online, without a long lock, while publishes and workers go on:

1. ``CREATE UNIQUE INDEX CONCURRENTLY`` on (id, created_at): the partitioned table's key must
   hold its partition column.
2. ``CHECK (created_at < <cut-over>) NOT VALID``, then ``VALIDATE`` (which scans with a lock
   that blocks no read and no write). The cut-over is the first midnight (UTC) at least two
   hours away: publishes keep landing in the old table until then, and it bounds the old
   table's range, so attaching it scans nothing.
3. One short transaction: the old table renamed ``system_events_legacy`` (its key swapped for
   the index of step 1, its indexes renamed, its count triggers dropped), the partitioned
   ``system_events`` made with the same columns, indexes, checks and count triggers, the old
   table attached ``FROM (MINVALUE) TO (<cut-over>)``, the default partition and the days from
   the cut-over made. Only catalog changes: no row is read or copied.

A database without events (a new one) gets no legacy partition: days from yesterday.

The outcome-minutes trigger (0007) finds each attempt's event by its id and created_at
bounds, so it reads one partition per attempt, not every partition; and it passes over
attempts that finished before the chart's two hours (an archive's restored attempts), which
the fold would purge at once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import op
from sqlalchemy import text

from bus.storage import partitions

revision = "0008"
down_revision = "0007"

DAYS_MADE = 8
"""Days made by the migration from the first one; the maintenance keeps making them after."""

_CUTOVER_CHECK = "ck_system_events_before_partitions"
_NEW_KEY = "ux_system_events_id_created_at"
_COUNT_TRIGGERS = {  # migration 0004's, made again on the partitioned table
    "inserted": ("INSERT", "REFERENCING NEW TABLE AS new_rows"),
    "deleted": ("DELETE", "REFERENCING OLD TABLE AS old_rows"),
    "updated": ("UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    "truncated": ("TRUNCATE", ""),
}

ID_TIME = r"""
CREATE FUNCTION eventbus_id_time(id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN substr(id::text, 15, 1) = '7'
        THEN timestamptz 'epoch' + ('x' || lpad(replace(substr(id::text, 1, 13), '-', ''), 16, '0'))
            ::bit(64)::bigint * interval '1 millisecond'
    END
$$;
"""
"""The millisecond a UUIDv7 names (``bus.events.ids.created_at_of``); null for other ids."""

OUTCOME_MINUTES = """
CREATE OR REPLACE FUNCTION eventbus_outcome_minutes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_outcome_minutes (tenant_id, target_module, minute, outcome, n)
    SELECT e.tenant_id, e.target_module, date_trunc('minute', a.finished_at, 'UTC'),
           a.outcome, count(*)
    FROM new_rows a CROSS JOIN LATERAL (
        SELECT tenant_id, target_module FROM system_events s
        WHERE s.id = a.event_id
          AND s.created_at >= coalesce(eventbus_id_time(a.event_id), '-infinity')
          AND s.created_at < coalesce(eventbus_id_time(a.event_id) + interval '1 millisecond',
                                      'infinity')
        LIMIT 1
    ) e
    WHERE a.finished_at >= now() - interval '2 hours'
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;
"""


# The indexes of ``system_events`` as 0001-0004 made them, written out: this migration must
# make the same ones whatever the model says later (0010 trims them).
_INDEX_DDL = {
    "ix_events_relay_pending": "(dispatched_at) WHERE status = 'pending'",
    "ix_events_relay_failed": (
        "(next_attempt_at) WHERE status = 'failed' AND next_attempt_at IS NOT NULL"
    ),
    "ix_events_tenant_source_created": "(tenant_id, source_module, created_at)",
    "ix_events_tenant_type_created": "(tenant_id, event_type, created_at, id)",
    "ix_events_created": "(created_at, id)",
    "ix_events_tenant_created": "(tenant_id, created_at, id)",
    "ix_events_tenant_status_created": "(tenant_id, status, created_at, id)",
    "ix_events_tenant_entity_created": "(tenant_id, entity_type, created_at)",
    "ix_events_tenant_status": "(tenant_id, status)",
    "ix_events_tenant_target_status_created": "(tenant_id, target_module, status, created_at, id)",
}


def _index_names() -> list[str]:
    return list(_INDEX_DDL)


def _index_ddl() -> list[str]:
    return [f"CREATE INDEX {name} ON system_events {on}" for name, on in _INDEX_DDL.items()]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if partitions.is_partitioned(bind):
        return
    now = bind.execute(text("SELECT now()")).scalar_one().astimezone(UTC)
    cutover = partitions.midnight((now + timedelta(hours=2)).date() + timedelta(days=1))
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_NEW_KEY}")
        op.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {_NEW_KEY} ON system_events (id, created_at)")
        op.execute(f"ALTER TABLE system_events DROP CONSTRAINT IF EXISTS {_CUTOVER_CHECK}")
        op.execute(
            f"ALTER TABLE system_events ADD CONSTRAINT {_CUTOVER_CHECK} "
            f"CHECK (created_at < '{cutover.isoformat()}') NOT VALID"
        )
        op.execute(f"ALTER TABLE system_events VALIDATE CONSTRAINT {_CUTOVER_CHECK}")
    _swap(cutover, now)


def _swap(cutover: datetime, now: datetime) -> None:
    op.execute("LOCK TABLE system_events IN ACCESS EXCLUSIVE MODE")
    held = op.get_bind().execute(text("SELECT EXISTS (SELECT 1 FROM system_events)")).scalar_one()
    op.execute(f"ALTER TABLE system_events RENAME TO {partitions.LEGACY}")
    op.execute(f"ALTER TABLE {partitions.LEGACY} DROP CONSTRAINT pk_system_events")
    op.execute(
        f"ALTER TABLE {partitions.LEGACY} ADD CONSTRAINT pk_{partitions.LEGACY} "
        f"PRIMARY KEY USING INDEX {_NEW_KEY}"
    )
    for name in _index_names():
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_legacy")
    for name in _COUNT_TRIGGERS:
        op.execute(f"DROP TRIGGER eventbus_count_{name} ON {partitions.LEGACY}")
    op.execute(
        f"CREATE TABLE system_events (LIKE {partitions.LEGACY} INCLUDING DEFAULTS "
        "INCLUDING STORAGE) PARTITION BY RANGE (created_at)"
    )
    op.execute(
        "ALTER TABLE system_events ADD CONSTRAINT pk_system_events PRIMARY KEY (id, created_at)"
    )
    op.execute(
        "ALTER TABLE system_events ADD CONSTRAINT ck_system_events_status "
        "CHECK (status IN ('pending', 'processed', 'failed'))"
    )
    for ddl in _index_ddl():
        op.execute(ddl)
    for name, (event, transition) in _COUNT_TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER eventbus_count_{name} AFTER {event} ON system_events {transition} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION eventbus_count_{name}()"
        )
    op.execute(f"CREATE TABLE {partitions.DEFAULT} PARTITION OF system_events DEFAULT")
    connection = op.get_bind()
    if held:
        op.execute(
            f"ALTER TABLE system_events ATTACH PARTITION {partitions.LEGACY} "
            f"FOR VALUES FROM (MINVALUE) TO ('{cutover.isoformat()}')"
        )
        first = cutover.date()
    else:
        op.execute(f"DROP TABLE {partitions.LEGACY}")
        first = now.date() - timedelta(days=1)
    day = first
    while day <= now.date() + timedelta(days=DAYS_MADE):
        partitions.make_day(connection, day)
        day += timedelta(days=1)
    op.execute(ID_TIME)
    op.execute(OUTCOME_MINUTES)


def downgrade() -> None:
    raise NotImplementedError(
        "0008 is not reversed: copy system_events into a plain table by hand if you must "
        "(the partitioned history holds the same columns)"
    )
