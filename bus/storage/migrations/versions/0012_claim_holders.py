"""claims cost no index entry: the claim holders table; the set's claimed_by and send-stamp
indexes dropped; the set's pages half free

Create Date: 2026-12-04 03:30:00

A claim stamps up to a batch of ``event_queue`` rows. ``ix_event_queue_claimed_by`` (0011)
indexed the stamp, so no stamp was a HOT update: measured, 0 of 500 claim updates HOT, each
writing an entry in all seven indexes of the set. Which processes hold claims (to end those of
a process that died) is now one row per worker process and module in ``claim_holders``, written
by the claim itself; the rows of a dead process are then found by a scan of its module's rows,
which happens once per death, not per claim. ``ix_event_queue_dispatched_at`` went unread
since the relay stopped keeping a send lease (0011). With the set's pages filled to half
(``FILLFACTOR``), a stamp finds room on its own page: measured 444 of 500 HOT.

Online: drops ``CONCURRENTLY``; the new table is small; the fill factor applies to pages
written from now on (a ``VACUUM FULL`` is not needed: the set turns over with its backlog).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bus.storage.models

revision = "0012"
down_revision = "0011"

FILLFACTOR = 50  # bus.storage.models.QUEUE_FILLFACTOR when written
_GONE = ("ix_event_queue_claimed_by", "ix_event_queue_dispatched_at")


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "claim_holders",
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("target_module", sa.String(64), nullable=False),
        sa.Column("until", bus.storage.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("worker", "pid", "target_module", name=op.f("pk_claim_holders")),
    )
    if bind.dialect.name != "postgresql":
        for name in _GONE:
            op.execute(f"DROP INDEX IF EXISTS {name}")
        return
    op.execute(f"ALTER TABLE event_queue SET (fillfactor = {FILLFACTOR})")
    with op.get_context().autocommit_block():
        for name in _GONE:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def downgrade() -> None:
    raise NotImplementedError("0012 is not reversed")
