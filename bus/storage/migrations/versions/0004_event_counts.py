"""exact counts kept as data: the list's `total` without a COUNT over the events

Create Date: 2026-12-01 22:30:00

PostgreSQL only (SQLite, for `eventbus dev`, counts its few rows). Statement-level triggers on
``system_events`` append, in the writing transaction, one row per (tenant, event_type,
source_module, target_module, entity_type, status) the statement changed, with the change in
``n``: a batch INSERT of 500 events of one kind is one row. The relay folds them
(``bus.storage.count_store.fold_counts``) into ``event_counts``, one row per such key; a reader
sums both
tables, so any snapshot sees each change exactly once, folded or not.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

KEY = ("tenant_id", "event_type", "source_module", "target_module", "entity_type", "status")
_KEY = ", ".join(KEY)


def _key_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("source_module", sa.String(64), nullable=False),
        sa.Column("target_module", sa.String(64), nullable=False),
        sa.Column("entity_type", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    ]


# Built from the column names above, never from input (S608).
TRIGGERS = f"""
CREATE FUNCTION eventbus_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_count_changes ({_KEY}, n)
    SELECT {_KEY}, count(*) FROM new_rows GROUP BY {_KEY};
    RETURN NULL;
END $$;

CREATE FUNCTION eventbus_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_count_changes ({_KEY}, n)
    SELECT {_KEY}, -count(*) FROM old_rows GROUP BY {_KEY};
    RETURN NULL;
END $$;

CREATE FUNCTION eventbus_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_count_changes ({_KEY}, n)
    SELECT {_KEY}, sum(n) FROM (
        SELECT {", ".join(f"o.{c}" for c in KEY)}, -1 AS n
        FROM old_rows o JOIN new_rows w ON w.id = o.id WHERE w.status <> o.status
        UNION ALL
        SELECT {", ".join(f"w.{c}" for c in KEY)}, 1 AS n
        FROM old_rows o JOIN new_rows w ON w.id = o.id WHERE w.status <> o.status
    ) AS moved GROUP BY {_KEY} HAVING sum(n) <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION eventbus_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_count_changes;
    DELETE FROM event_counts;
    RETURN NULL;
END $$;

CREATE TRIGGER eventbus_count_inserted AFTER INSERT ON system_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION eventbus_count_inserted();
CREATE TRIGGER eventbus_count_deleted AFTER DELETE ON system_events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION eventbus_count_deleted();
CREATE TRIGGER eventbus_count_updated AFTER UPDATE ON system_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION eventbus_count_updated();
CREATE TRIGGER eventbus_count_truncated AFTER TRUNCATE ON system_events
    FOR EACH STATEMENT EXECUTE FUNCTION eventbus_count_truncated();
"""  # noqa: S608


def upgrade() -> None:
    op.create_table(
        "event_counts",
        *_key_columns(),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*KEY, name=op.f("pk_event_counts")),
    )
    op.create_table(
        "event_count_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        *_key_columns(),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_count_changes")),
    )
    op.create_index("ix_event_count_changes_tenant", "event_count_changes", ["tenant_id"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(TRIGGERS)
    # Events stored before this migration: counted once, as one folded row per key.
    op.execute(
        f"INSERT INTO event_counts ({_KEY}, n) "  # noqa: S608
        f"SELECT {_KEY}, count(*) FROM system_events GROUP BY {_KEY}"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in ("inserted", "deleted", "updated", "truncated"):
            op.execute(f"DROP TRIGGER eventbus_count_{name} ON system_events")
            op.execute(f"DROP FUNCTION eventbus_count_{name}()")
    op.drop_table("event_count_changes")
    op.drop_table("event_counts")
