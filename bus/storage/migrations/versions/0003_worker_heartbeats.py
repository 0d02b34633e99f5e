"""worker heartbeats: which modules have a live worker

Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bus.storage.models

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "worker_heartbeats",
        sa.Column("queue_prefix", sa.String(length=64), nullable=False),
        sa.Column("module", sa.String(length=64), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("seen_at", bus.storage.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "queue_prefix", "module", "worker", name=op.f("pk_worker_heartbeats")
        ),
    )


def downgrade() -> None:
    op.drop_table("worker_heartbeats")
