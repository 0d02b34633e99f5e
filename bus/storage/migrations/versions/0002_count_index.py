"""a narrow index for the list's counts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_events_tenant_status", "system_events", ["tenant_id", "status"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_events_tenant_status", table_name="system_events")
