"""the scheduler: claims and key holds in the in-flight set; paused modules; tenants' usage

Create Date: 2026-12-03 22:30:00

Workers no longer run the ids a message carries: they claim ready events from ``event_queue``
(``bus.storage.claim_store``). A claim is stamped on the set's row (``claimed_until``,
``claimed_by``, ``claimed_pid``) and committed before any handler runs, so a claim that
outlives its process tells the next one that a run was lost. ``hold`` says whether a failed
event of an ordered handler keeps its entity's later events waiting. Every status change of
an event clears the four (the UPDATE trigger of 0010, replaced here; SQLite's ``INSERT OR
REPLACE`` already writes the row afresh).

``module_pauses``: modules whose events no worker claims. ``tenant_usage``: the handler time
each tenant used per module, decayed, which orders a claim fairly.

Online: new nullable columns and two small tables; the set's indexes are built
``CONCURRENTLY`` (the set holds the backlog, which may be large).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bus.storage.models

revision = "0011"
down_revision = "0010"

_KEPT = (
    "id, created_at, tenant_id, event_type, source_module, target_module, entity_type, "
    "entity_id, status"
)
_COLUMNS = f"{_KEPT}, due_at, dispatched_at, request_id"
_DUE_CHANGED = (
    "CASE WHEN status = 'pending' THEN coalesce(dispatched_at, created_at) ELSE next_attempt_at END"
)

# 0010's function, with the claim and the hold cleared by every status change.
PG_UPDATED = f"""
CREATE OR REPLACE FUNCTION eventbus_queue_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_queue
    WHERE id = ANY (ARRAY(SELECT id FROM new_rows WHERE status = 'processed'));
    INSERT INTO event_queue ({_COLUMNS})
    SELECT {_KEPT}, {_DUE_CHANGED}, dispatched_at, request_id
    FROM new_rows WHERE status <> 'processed'
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, due_at = excluded.due_at,
        dispatched_at = excluded.dispatched_at, claimed_until = NULL, claimed_by = NULL,
        claimed_pid = NULL, hold = NULL;
    RETURN NULL;
END $$;
"""  # noqa: S608

_INDEXES = (
    ("ix_event_queue_target_tenant_created", "(target_module, tenant_id, created_at, id)", ""),
    (
        "ix_event_queue_key",
        "(target_module, tenant_id, entity_type, entity_id, created_at, id)",
        "",
    ),
    ("ix_event_queue_claimed_by", "(claimed_by)", " WHERE claimed_by IS NOT NULL"),
)


def upgrade() -> None:
    bind = op.get_bind()
    utc = bus.storage.models.UTCDateTime
    # Plain ADD COLUMN on both (SQLite's batch mode would rebuild the table under 0010's
    # triggers, which then name a table that is gone); the CHECK on PostgreSQL only.
    op.add_column("event_queue", sa.Column("claimed_until", utc(), nullable=True))
    op.add_column("event_queue", sa.Column("claimed_by", sa.String(255), nullable=True))
    op.add_column("event_queue", sa.Column("claimed_pid", sa.Integer(), nullable=True))
    op.add_column("event_queue", sa.Column("hold", sa.String(8), nullable=True))
    if bind.dialect.name == "postgresql":
        op.create_check_constraint(
            op.f("ck_event_queue_hold"), "event_queue", "hold IN ('block', 'skip', 'released')"
        )
    op.create_table(
        "module_pauses",
        sa.Column("target_module", sa.String(64), nullable=False),
        sa.Column("paused_at", utc(), nullable=False),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("target_module", name=op.f("pk_module_pauses")),
    )
    op.create_table(
        "tenant_usage",
        sa.Column("target_module", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("events", sa.Float(), nullable=False),
        sa.Column("updated_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("target_module", "tenant_id", name=op.f("pk_tenant_usage")),
    )
    if bind.dialect.name != "postgresql":
        for name, columns, where in _INDEXES:
            op.execute(f"CREATE INDEX {name} ON event_queue {columns}{where}")
        return
    op.execute(PG_UPDATED)
    with op.get_context().autocommit_block():
        for name, columns, where in _INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # a build cut short
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON event_queue {columns}{where}")


def downgrade() -> None:
    raise NotImplementedError("0011 is not reversed")
