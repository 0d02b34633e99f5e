"""restored days: history partitions brought back from an archive, kept for a while

Create Date: 2026-12-04 10:00:00

``eventbus archive restore`` records each partition it filled (``bus.storage.archive_store``)
with the time until which the retention leaves it alone: a day restored for a look must not be
dropped again by the very next pass. Made on SQLite too, for one schema on both (restore itself
is PostgreSQL only).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bus.storage.models

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_table(
        "restored_days",
        sa.Column("partition", sa.String(63), nullable=False),
        sa.Column("restored_at", bus.storage.models.UTCDateTime(), nullable=False),
        sa.Column("keep_until", bus.storage.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_restored_days")),
    )


def downgrade() -> None:
    op.drop_table("restored_days")
