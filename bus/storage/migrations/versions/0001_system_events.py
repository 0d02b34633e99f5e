"""system events

Create Date: 2026-11-26 08:01:29.899985
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import bus.storage.models

revision = "0001"
down_revision = None


def upgrade() -> None:

    op.create_table(
        "system_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=255), nullable=False),
        sa.Column("source_module", sa.String(length=64), nullable=False),
        sa.Column("target_module", sa.String(length=64), nullable=False),
        sa.Column("entity_type", sa.String(length=255), nullable=False),
        sa.Column("entity_id", sa.String(length=255), nullable=False),
        sa.Column(
            "event_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("retry_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", bus.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("processed_at", bus.storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("dispatched_at", bus.storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", bus.storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'processed', 'failed')", name=op.f("ck_system_events_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_system_events")),
    )
    op.create_index("ix_events_created", "system_events", ["created_at", "id"], unique=False)
    op.create_index(
        "ix_events_relay_failed",
        "system_events",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'failed' AND next_attempt_at IS NOT NULL"),
        sqlite_where=sa.text("status = 'failed' AND next_attempt_at IS NOT NULL"),
    )
    op.create_index(
        "ix_events_relay_pending",
        "system_events",
        ["dispatched_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_events_tenant_created", "system_events", ["tenant_id", "created_at", "id"], unique=False
    )
    op.create_index(
        "ix_events_tenant_entity_created",
        "system_events",
        ["tenant_id", "entity_type", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_events_tenant_source_created",
        "system_events",
        ["tenant_id", "source_module", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_events_tenant_status_created",
        "system_events",
        ["tenant_id", "status", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_events_tenant_target_status_created",
        "system_events",
        ["tenant_id", "target_module", "status", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_events_tenant_type_created",
        "system_events",
        ["tenant_id", "event_type", "created_at", "id"],
        unique=False,
    )


def downgrade() -> None:

    op.drop_index("ix_events_tenant_type_created", table_name="system_events")
    op.drop_index("ix_events_tenant_target_status_created", table_name="system_events")
    op.drop_index("ix_events_tenant_status_created", table_name="system_events")
    op.drop_index("ix_events_tenant_source_created", table_name="system_events")
    op.drop_index("ix_events_tenant_entity_created", table_name="system_events")
    op.drop_index("ix_events_tenant_created", table_name="system_events")
    op.drop_index(
        "ix_events_relay_pending",
        table_name="system_events",
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.drop_index(
        "ix_events_relay_failed",
        table_name="system_events",
        postgresql_where=sa.text("status = 'failed' AND next_attempt_at IS NOT NULL"),
        sqlite_where=sa.text("status = 'failed' AND next_attempt_at IS NOT NULL"),
    )
    op.drop_index("ix_events_created", table_name="system_events")
    op.drop_table("system_events")
