"""event attempts: each event's history of handler runs and reported outcomes

Create Date: 2026-12-01 23:30:00

One row per attempt (``bus.storage.attempt_store``), appended by the workers in the transaction of
the
outcome (one INSERT per batch delivery) and by a ``PUT`` that changes the status; the relay
purges rows older than ``EVENTBUS_ATTEMPTS_RETENTION_DAYS``. No trigger: ``system_events``'s
count triggers (0004) are untouched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bus.storage.models

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "event_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            nullable=False,
        ),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", bus.storage.models.UTCDateTime(), nullable=True),
        sa.Column("finished_at", bus.storage.models.UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('processed', 'failed', 'lost')", name=op.f("ck_event_attempts_outcome")
        ),
        sa.CheckConstraint("source IN ('worker', 'api')", name=op.f("ck_event_attempts_source")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_attempts")),
    )
    op.create_index(
        "ix_event_attempts_event_attempt", "event_attempts", ["event_id", "attempt"], unique=True
    )
    op.create_index("ix_event_attempts_finished_at", "event_attempts", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_event_attempts_finished_at", table_name="event_attempts")
    op.drop_index("ix_event_attempts_event_attempt", table_name="event_attempts")
    op.drop_table("event_attempts")
