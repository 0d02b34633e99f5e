"""a narrow index for the list's counts

Create Date: 2026-11-26 09:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_index(
        "ix_events_tenant_status", "system_events", ["tenant_id", "status"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_events_tenant_status", table_name="system_events")
