"""idempotency keys: a publish's Idempotency-Key and the response it was answered

Create Date: 2026-12-01 23:00:00

One row per (tenant, key), written in the same transaction as the event(s) it answered, so a
client retrying after the API died between commit and answer is answered the first response
(see ``bus.storage.idempotency_store``). ``response`` is the exact text sent; ``expires_at`` drives
the
relay's purge.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bus.storage.models

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", bus.storage.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", bus.storage.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
