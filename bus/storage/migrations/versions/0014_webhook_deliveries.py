"""webhook deliveries: each event's outcome with each endpoint; an endpoint's failing time

Create Date: 2026-12-04 18:00:00

``webhook_deliveries`` holds one row per (event, endpoint) the event went to, written with the
event's attempt outcome: ``acknowledged`` (a 2xx: never sent to that endpoint again, whatever
retries or replays follow), ``failed`` (the last request failed) or ``waiting`` (the endpoint
is disabled). ``webhook_endpoints.failing_since`` says since when every delivery to an endpoint
failed (null after a 2xx); the worker disables the endpoint once that is
``EVENTBUS_WEBHOOK_DISABLE_AFTER_SECONDS`` ago.

A new, empty table and a nullable column without a default: online on PostgreSQL (no rewrite);
made on SQLite too (``eventbus dev``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bus.storage.models

revision = "0014"
down_revision = "0013"


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.add_column(
            sa.Column("failing_since", bus.storage.models.UTCDateTime(), nullable=True)
        )
    op.create_table(
        "webhook_deliveries",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("event_created_at", bus.storage.models.UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_attempt_at", bus.storage.models.UTCDateTime(), nullable=True),
        sa.Column("acknowledged_at", bus.storage.models.UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('acknowledged', 'failed', 'waiting')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.PrimaryKeyConstraint("event_id", "endpoint_id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_status",
        "webhook_deliveries",
        ["endpoint_id", "status", "last_attempt_at"],
    )
    op.create_index(
        "ix_webhook_deliveries_event_created", "webhook_deliveries", ["event_created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_event_created", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_endpoint_status", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.drop_column("failing_since")
