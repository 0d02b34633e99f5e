"""the in-flight set: event_queue kept by triggers; the history's indexes lose every status column

Create Date: 2026-12-03 19:30:00

``event_queue`` (``bus.storage.models.event_queue``) holds one row per event that is not
processed: pending, or failed (``due_at`` its retry's time, null when none is to come). The
database keeps it in the transaction that writes the event, with triggers on
``system_events``: statement-level ones reading the transition tables on PostgreSQL (one
statement per batch, like the counts of 0004), row-level ones on SQLite. Whatever writes an
event (this release, the release before it during a rolling upgrade, an operator's SQL) keeps
the set right.

Then the history's indexes drop every column a status change writes: ``ix_events_tenant_status``,
``ix_events_tenant_status_created``, ``ix_events_tenant_target_status_created`` and the relay's two
partial indexes go (the in-flight set answers what they answered),
``ix_events_tenant_target_created`` comes, and the partitions keep half of each page free
(``FILLFACTOR``): a completion is a HOT update, no index entry written.

Online on PostgreSQL, while publishes and workers go on: the set is made and its triggers
created first (a short lock); then filled from the history in its own transaction, and,
once every transaction older than that fill has ended, emptied of what finished meanwhile (a
completion that ran before the fill was committed found no row to delete). The new index is
built per partition ``CONCURRENTLY`` and attached; the drops are catalog changes.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy import text

import bus.storage.models
from bus.storage import partitions

revision = "0010"
down_revision = "0009"

FILLFACTOR = 50  # bus.storage.models.FILLFACTOR when written

_GONE = (
    "ix_events_tenant_status",
    "ix_events_tenant_status_created",
    "ix_events_tenant_target_status_created",
    "ix_events_relay_pending",
    "ix_events_relay_failed",
)
_NEW_INDEX = "ix_events_tenant_target_created"
_NEW_ON = "(tenant_id, target_module, created_at, id)"

_KEPT = (
    "id, created_at, tenant_id, event_type, source_module, target_module, entity_type, "
    "entity_id, status"
)
_COLUMNS = f"{_KEPT}, due_at, dispatched_at, request_id"
# When it may run: a new pending event from its creation; one set pending again (a retry by
# hand, a replay) from that change's send stamp; a failed one at its retry (null: none).
# ({r}: the row's columns as a trigger names them: "" on PostgreSQL, "NEW." in SQLite's)
_DUE_NEW_OF = "CASE WHEN {r}status = 'pending' THEN {r}created_at ELSE {r}next_attempt_at END"
_DUE_CHANGED_OF = (
    "CASE WHEN {r}status = 'pending' THEN coalesce({r}dispatched_at, {r}created_at) "
    "ELSE {r}next_attempt_at END"
)
_DUE_NEW = _DUE_NEW_OF.format(r="")
_DUE_CHANGED = _DUE_CHANGED_OF.format(r="")

# Built from the column names above, never from input (S608).
PG_TRIGGERS = f"""
CREATE FUNCTION eventbus_queue_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_queue ({_COLUMNS})
    SELECT {_KEPT}, {_DUE_NEW}, dispatched_at, request_id
    FROM new_rows WHERE status <> 'processed'
    ON CONFLICT (id) DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION eventbus_queue_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- An array of ids, so the plan is a probe of the key per id whatever the batch's size.
    DELETE FROM event_queue
    WHERE id = ANY (ARRAY(SELECT id FROM new_rows WHERE status = 'processed'));
    INSERT INTO event_queue ({_COLUMNS})
    SELECT {_KEPT}, {_DUE_CHANGED}, dispatched_at, request_id
    FROM new_rows WHERE status <> 'processed'
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, due_at = excluded.due_at,
        dispatched_at = excluded.dispatched_at;
    RETURN NULL;
END $$;

CREATE FUNCTION eventbus_queue_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_queue WHERE id = ANY (ARRAY(SELECT id FROM old_rows));
    RETURN NULL;
END $$;

CREATE FUNCTION eventbus_queue_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_queue;
    RETURN NULL;
END $$;

CREATE TRIGGER eventbus_queue_inserted AFTER INSERT ON system_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION eventbus_queue_inserted();
CREATE TRIGGER eventbus_queue_updated AFTER UPDATE ON system_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION eventbus_queue_updated();
CREATE TRIGGER eventbus_queue_deleted AFTER DELETE ON system_events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION eventbus_queue_deleted();
CREATE TRIGGER eventbus_queue_truncated AFTER TRUNCATE ON system_events
    FOR EACH STATEMENT EXECUTE FUNCTION eventbus_queue_truncated();
"""  # noqa: S608


def _sqlite_row(due_of: str) -> str:
    row = {name: f"NEW.{name}" for name in _COLUMNS.split(", ")}
    row["due_at"] = due_of.format(r="NEW.")
    return ", ".join(row.values())


_SQLITE_NEW = _sqlite_row(_DUE_NEW_OF)
_SQLITE_CHANGED = _sqlite_row(_DUE_CHANGED_OF)

SQLITE_TRIGGERS = (  # built from the column names above, never from input (S608)
    f"""CREATE TRIGGER eventbus_queue_inserted AFTER INSERT ON system_events
    WHEN NEW.status <> 'processed'
    BEGIN INSERT OR IGNORE INTO event_queue ({_COLUMNS}) VALUES ({_SQLITE_NEW}); END""",  # noqa: S608
    f"""CREATE TRIGGER eventbus_queue_updated AFTER UPDATE ON system_events
    BEGIN
        DELETE FROM event_queue WHERE id = NEW.id AND NEW.status = 'processed';
        INSERT OR REPLACE INTO event_queue ({_COLUMNS})
        SELECT {_SQLITE_CHANGED} WHERE NEW.status <> 'processed';
    END""",  # noqa: S608
    """CREATE TRIGGER eventbus_queue_deleted AFTER DELETE ON system_events
    BEGIN DELETE FROM event_queue WHERE id = OLD.id; END""",
)


def _create_table() -> None:
    op.create_table(
        "event_queue",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", bus.storage.models.UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("source_module", sa.String(64), nullable=False),
        sa.Column("target_module", sa.String(64), nullable=False),
        sa.Column("entity_type", sa.String(255), nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("due_at", bus.storage.models.UTCDateTime(), nullable=True),
        sa.Column("dispatched_at", bus.storage.models.UTCDateTime(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'failed')", name=op.f("ck_event_queue_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_queue")),
    )
    op.create_index(
        "ix_event_queue_tenant_status_created",
        "event_queue",
        ["tenant_id", "status", "created_at", "id"],
    )
    op.create_index(
        "ix_event_queue_tenant_target_status_created",
        "event_queue",
        ["tenant_id", "target_module", "status", "created_at", "id"],
    )
    op.create_index("ix_event_queue_dispatched_at", "event_queue", ["dispatched_at"])


_FILL = (
    f"INSERT INTO event_queue ({_COLUMNS}) "  # noqa: S608
    f"SELECT {_KEPT}, {_DUE_NEW}, dispatched_at, request_id FROM system_events "
    "WHERE status <> 'processed' ON CONFLICT (id) DO NOTHING"
)


def upgrade() -> None:
    bind = op.get_bind()
    _create_table()
    if bind.dialect.name != "postgresql":
        for ddl in SQLITE_TRIGGERS:
            op.execute(ddl)
        op.execute(_FILL.replace("ON CONFLICT (id) DO NOTHING", ""))
        for name in _GONE:
            op.execute(f"DROP INDEX IF EXISTS {name}")
        op.create_index(
            _NEW_INDEX, "system_events", ["tenant_id", "target_module", "created_at", "id"]
        )
        return
    # A churning table that stays small: vacuumed after a thousand dead rows, not a fifth.
    op.execute(
        "ALTER TABLE event_queue SET (autovacuum_vacuum_scale_factor = 0.01, "
        "autovacuum_vacuum_threshold = 1000)"
    )
    op.execute(PG_TRIGGERS)
    with op.get_context().autocommit_block():
        _fill(bind)
        _index_partitions(bind)
        for name in _GONE:
            _with_retries(bind, f"DROP INDEX IF EXISTS {name}")
        for p in partitions.partitions(bind):
            if p.name != partitions.LEGACY:
                bind.execute(text(f"ALTER TABLE {p.name} SET (fillfactor = {FILLFACTOR})"))


def _fill(bind: sa.Connection) -> None:
    """Every unfinished event into the set, then out again what finished while the fill ran."""
    bind.execute(text(_FILL))
    filled = bind.execute(text("SELECT clock_timestamp()")).scalar_one()
    # A transaction that completed an event before the fill was committed deleted no row;
    # once none older than the fill is left, the history says what they did.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        older = bind.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND datname = current_database() AND xact_start < :filled"
            ),
            {"filled": filled},
        ).scalar_one()
        if not older:
            break
        time.sleep(0.2)
    bind.execute(
        text(
            "DELETE FROM event_queue q USING system_events e "
            "WHERE e.id = q.id AND e.created_at = q.created_at AND e.status = 'processed'"
        )
    )


def _index_partitions(bind: sa.Connection) -> None:
    """The new index on the parent alone, then built CONCURRENTLY on each partition and
    attached: no write waits for a build."""
    bind.execute(text(f"CREATE INDEX IF NOT EXISTS {_NEW_INDEX} ON ONLY system_events {_NEW_ON}"))
    for p in partitions.partitions(bind):
        child = f"{p.name}_tenant_target_created"
        bind.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {child}"))  # a build cut short
        bind.execute(text(f"CREATE INDEX CONCURRENTLY {child} ON {p.name} {_NEW_ON}"))
        bind.execute(text(f"ALTER INDEX {_NEW_INDEX} ATTACH PARTITION {child}"))


def _with_retries(bind: sa.Connection, statement: str, tries: int = 10) -> None:
    """A catalog change that needs a moment's exclusive lock: waiting at most a few seconds
    each try, so publishes never queue behind it for long."""
    for attempt in range(tries):
        try:
            bind.execute(text("SET lock_timeout = '3s'"))
            bind.execute(text(statement))
            return
        except sa.exc.OperationalError:
            if attempt == tries - 1:
                raise
        finally:
            bind.execute(text("RESET lock_timeout"))


def downgrade() -> None:
    raise NotImplementedError(
        "0010 is not reversed: the history no longer indexes status; recreate 0008's indexes "
        "by hand if you must"
    )
