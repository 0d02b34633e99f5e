"""handler outcomes per minute: the operators' chart without reading an hour of attempts

Create Date: 2026-12-02 01:00:00

PostgreSQL only (SQLite, for `eventbus dev`, buckets its few attempts when asked). A
statement-level trigger on ``event_attempts`` appends, in the writing transaction, one row per
(tenant, target module, minute, outcome) the statement added, with the number in ``n``: a
worker's batch of 500 outcomes is a row or two, never a row per event, and never an UPDATE of
a shared row (concurrent workers would queue on it). The relay folds each closed minute into
one row per key and purges what the chart no longer shows
(``bus.storage.count_store.fold_outcome_minutes``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bus.storage.models

revision = "0007"
down_revision = "0006"

TRIGGERS = """
CREATE FUNCTION eventbus_outcome_minutes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_outcome_minutes (tenant_id, target_module, minute, outcome, n)
    SELECT e.tenant_id, e.target_module, date_trunc('minute', a.finished_at, 'UTC'),
           a.outcome, count(*)
    FROM new_rows a JOIN system_events e ON e.id = a.event_id
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

CREATE FUNCTION eventbus_outcome_minutes_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_outcome_minutes;
    RETURN NULL;
END $$;

CREATE TRIGGER eventbus_outcome_minutes AFTER INSERT ON event_attempts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION eventbus_outcome_minutes();
CREATE TRIGGER eventbus_outcome_minutes_truncated AFTER TRUNCATE ON event_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION eventbus_outcome_minutes_truncated();
"""


def upgrade() -> None:
    op.create_table(
        "event_outcome_minutes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            nullable=False,
        ),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("target_module", sa.String(64), nullable=False),
        sa.Column("minute", bus.storage.models.UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_outcome_minutes")),
    )
    op.create_index("ix_event_outcome_minutes_minute", "event_outcome_minutes", ["minute"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(TRIGGERS)
    # Attempts recorded before this migration: the last hours' are bucketed once.
    op.execute(
        "INSERT INTO event_outcome_minutes (tenant_id, target_module, minute, outcome, n) "
        "SELECT e.tenant_id, e.target_module, date_trunc('minute', a.finished_at, 'UTC'), "
        "a.outcome, count(*) FROM event_attempts a JOIN system_events e ON e.id = a.event_id "
        "WHERE a.finished_at >= now() - interval '2 hours' GROUP BY 1, 2, 3, 4"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER eventbus_outcome_minutes ON event_attempts")
        op.execute("DROP TRIGGER eventbus_outcome_minutes_truncated ON event_attempts")
        op.execute("DROP FUNCTION eventbus_outcome_minutes()")
        op.execute("DROP FUNCTION eventbus_outcome_minutes_truncated()")
    op.drop_index("ix_event_outcome_minutes_minute", table_name="event_outcome_minutes")
    op.drop_table("event_outcome_minutes")
