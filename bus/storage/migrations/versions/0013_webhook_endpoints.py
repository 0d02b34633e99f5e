"""webhook endpoints: HTTP receivers of a tenant's events of one module (issue 22)

Create Date: 2026-12-04 15:00:00

One row per endpoint: where (``url``), which events (``target_module``, and ``event_types`` or
null for all of them), how they are written (``format``), whether it receives them
(``enabled``, and ``disabled_reason`` when the bus turned it off), whether a failure holds its
entities (``ordered``), and its signing secrets (``secrets``: the current one, and during a
rotation the previous one with its expiry). Nothing delivers to it yet: the delivery step reads
a module's enabled endpoints by ``ix_webhook_endpoints_target_tenant``.

A new, empty table: online on PostgreSQL; made on SQLite too (``eventbus dev``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import bus.storage.models

revision = "0013"
down_revision = "0012"

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("target_module", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", _JSON, nullable=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("ordered", sa.Boolean(), nullable=False),
        sa.Column("secrets", _JSON, nullable=False),
        sa.Column("disabled_reason", sa.String(255), nullable=True),
        sa.Column("created_at", bus.storage.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", bus.storage.models.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "format IN ('seed', 'cloudevents-structured', 'cloudevents-binary')",
            name=op.f("ck_webhook_endpoints_format"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        "ix_webhook_endpoints_tenant_created",
        "webhook_endpoints",
        ["tenant_id", "created_at", "id"],
    )
    op.create_index(
        "ix_webhook_endpoints_target_tenant", "webhook_endpoints", ["target_module", "tenant_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_endpoints_target_tenant", table_name="webhook_endpoints")
    op.drop_index("ix_webhook_endpoints_tenant_created", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
