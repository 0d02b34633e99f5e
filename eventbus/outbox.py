"""The transactional outbox in the caller's own PostgreSQL database.

A module that writes its own data and must publish an event about it adds the event to its
own transaction with :func:`publish`: the row commits with the module's writes or rolls back
with them. ``eventbus forward`` (:class:`Forwarder`) then drains the table into the bus, each
row's id being the event's id (straight into the bus's database) or its Idempotency-Key (over
HTTP), so a forwarder killed at any point and restarted publishes every committed row exactly
once, and never a rolled-back one.

The table is :data:`outbox_table` on its own :data:`metadata`: ``metadata.create_all(engine)``
(what ``eventbus outbox init`` does), or, in Alembic, ``target_metadata = [yours,
eventbus.outbox.metadata]`` for autogenerate, or copy :data:`MIGRATION`'s body into a revision.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session

from bus.events.fields import PUBLISHED
from eventbus.errors import EventBusError, InvalidRequest

log = logging.getLogger(__name__)

TABLE = "eventbus_outbox"
metadata = MetaData()
outbox_table = Table(
    TABLE,
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("event_type", String(255), nullable=False),
    Column("source_module", String(64), nullable=False),
    Column("target_module", String(64), nullable=False),
    Column("entity_type", String(255), nullable=False),
    Column("entity_id", String(255), nullable=False),
    Column("event_data", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("forwarded_at", DateTime(timezone=True), nullable=True),
    Column("error_message", Text, nullable=True),
    # What the forwarder reads: the rows not forwarded yet, oldest first.
    Index(
        "ix_eventbus_outbox_unforwarded",
        "created_at",
        postgresql_where=text("forwarded_at IS NULL"),
    ),
    Index(
        "ix_eventbus_outbox_forwarded_at",
        "forwarded_at",
        postgresql_where=text("forwarded_at IS NOT NULL"),
    ),
)
"""``eventbus_outbox``: one row per event to publish; ``forwarded_at`` once it is in the bus
(``error_message`` set too if the bus refused it), purged after the retention."""

MIGRATION = """
# An Alembic revision a caller can copy into its own migrations.
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

def upgrade() -> None:
    op.create_table(
        "eventbus_outbox",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("source_module", sa.String(64), nullable=False),
        sa.Column("target_module", sa.String(64), nullable=False),
        sa.Column("entity_type", sa.String(255), nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("event_data", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("forwarded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
    )
    op.create_index("ix_eventbus_outbox_unforwarded", "eventbus_outbox", ["created_at"],
                    postgresql_where=sa.text("forwarded_at IS NULL"))
    op.create_index("ix_eventbus_outbox_forwarded_at", "eventbus_outbox", ["forwarded_at"],
                    postgresql_where=sa.text("forwarded_at IS NOT NULL"))

def downgrade() -> None:
    op.drop_table("eventbus_outbox")
"""
"""The same table as an Alembic revision's body (``tests/integration/test_outbox.py`` checks
they match)."""

DEFAULT_MAX_EVENT_DATA_BYTES = 256 * 1024
"""The API's default ``EVENTBUS_MAX_EVENT_DATA_BYTES``."""


def init(engine: Engine) -> None:
    """Create the outbox table and its indexes if absent (``eventbus outbox init``)."""
    metadata.create_all(engine)


def publish(
    session: Session,
    *,
    tenant_id: uuid.UUID | str,
    event_type: str,
    source_module: str,
    target_module: str,
    entity_type: str,
    entity_id: str,
    event_data: Mapping[str, Any],
    max_event_data_bytes: int = DEFAULT_MAX_EVENT_DATA_BYTES,
) -> uuid.UUID:
    """Add an event to the caller's transaction in ``session``; returns the outbox row's id,
    which is also the event's id in the bus when the row is forwarded straight into its database
    (over ``--api`` the bus gives the event an id of its own). Nothing is published unless that
    transaction commits.

    Checked by the API's rules first: a body the API would refuse raises
    :class:`~eventbus.errors.InvalidRequest` with the API's status and message
    (``Field required entity_id``, ``Invalid target_module``, ``Event data too large``…).
    """
    from bus.errors import BusError
    from bus.events.ids import new_event_id
    from bus.events.schemas import parse_new_event

    given_text = (event_type, source_module, target_module, entity_type, entity_id)
    try:
        tenant = tenant_id if isinstance(tenant_id, uuid.UUID) else uuid.UUID(str(tenant_id))
    except ValueError as exc:
        raise InvalidRequest(400, "Invalid tenant_id") from exc
    data = dict(event_data) if isinstance(event_data, Mapping) else event_data
    body = dict(zip(PUBLISHED, (*given_text, data), strict=True))
    try:
        new = parse_new_event(body, max_event_data_bytes)
    except BusError as exc:
        raise InvalidRequest(exc.status_code, exc.message) from exc
    # A UUIDv7: the event's created_at in the bus will be this moment, the one its id names.
    now = datetime.now(UTC)
    event_id = new_event_id(now)
    row = {"id": event_id, "tenant_id": tenant, "created_at": now, **new.published()}
    session.execute(insert(outbox_table).values(row))
    return event_id


# --- forwarding ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: uuid.UUID
    tenant_id: uuid.UUID
    body: dict[str, Any]
    """The publish body."""


@dataclass(slots=True)
class Outcome:
    """What a sink did with a batch: rows it stored (or found stored) and rows it refused,
    with the bus's message. Rows in neither stay in the outbox for the next batch."""

    done: list[uuid.UUID] = field(default_factory=list)
    refused: dict[uuid.UUID, str] = field(default_factory=dict)


class Sink(Protocol):
    def forward(self, rows: Sequence[OutboxRow]) -> Outcome: ...


_BODY = PUBLISHED


def take_batch(connection: Connection, limit: int) -> list[OutboxRow]:
    """Lock up to ``limit`` unforwarded rows, oldest first, skipping rows another forwarder
    holds (``FOR UPDATE SKIP LOCKED``): forwarders share the table without waiting."""
    t = outbox_table
    stmt = (
        select(t.c.id, t.c.tenant_id, *(t.c[name] for name in _BODY))
        .where(t.c.forwarded_at.is_(None))
        .order_by(t.c.created_at, t.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [_row(r) for r in connection.execute(stmt)]


def _row(r: Row[Any]) -> OutboxRow:
    return OutboxRow(r.id, r.tenant_id, {name: getattr(r, name) for name in _BODY})


def mark_forwarded(connection: Connection, outcome: Outcome) -> None:
    """Stamp ``forwarded_at`` on the rows done, and on the refused ones with their message."""
    t = outbox_table
    if outcome.done:
        connection.execute(
            update(t).where(t.c.id.in_(outcome.done)).values(forwarded_at=func.now())
        )
    for row_id, message in outcome.refused.items():
        connection.execute(
            update(t).where(t.c.id == row_id).values(forwarded_at=func.now(), error_message=message)
        )


def purge(connection: Connection, older_than: timedelta) -> int:
    """Delete rows forwarded more than ``older_than`` ago; returns how many."""
    t = outbox_table
    cutoff = func.now() - older_than
    result = connection.execute(
        delete(t).where(t.c.forwarded_at.is_not(None), t.c.forwarded_at < cutoff)
    )
    return int(result.rowcount)


class BusSink:
    """Straight into the bus's own database and broker: the rows stored in one unit of work
    with the outbox ids as event ids (``INSERT … ON CONFLICT (id) DO NOTHING``), only the new
    ones sent, after the commit (a send lost in a crash is the relay's, as for any publish)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def forward(self, rows: Sequence[OutboxRow]) -> Outcome:
        from bus.errors import BusError
        from bus.publish import service

        outcome = Outcome()
        events = []
        for row in rows:
            try:
                events.append(
                    service.new_event(
                        row.body,
                        self.runtime.settings,
                        row.tenant_id,
                        event_id=row.id,
                        request_id=f"outbox:{row.id}",
                    )
                )
            except BusError as exc:
                outcome.refused[row.id] = exc.message
        with self.runtime.unit_of_work() as uow:
            new = service.store_published_once(uow, events)
            uow.commit()
        outcome.done = [event.id for event in events]
        log.info("forwarded %d outbox rows (%d new)", len(outcome.done), len(new))
        return outcome


class ApiSink:
    """Over HTTP with :class:`eventbus.client.Client`: one publish per row, the row's id as
    its Idempotency-Key. A key per row, not per batch: a batch retried after a crash may hold
    other rows (new ones, or fewer because another forwarder took some), and a key naming a
    whole batch would then be new and publish its rows again."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def forward(self, rows: Sequence[OutboxRow]) -> Outcome:
        outcome = Outcome()
        for row in rows:
            try:
                self.client.publish(
                    **row.body, tenant_id=row.tenant_id, idempotency_key=str(row.id)
                )
            except InvalidRequest as exc:
                outcome.refused[row.id] = exc.message
            except EventBusError as exc:
                # The bus is down or refuses us (401/403): keep the rest for the next batch.
                log.warning("forward stopped at outbox row %s: %s", row.id, exc)
                break
            else:
                outcome.done.append(row.id)
        return outcome


@dataclass(eq=False)
class Forwarder:
    """Drain ``eventbus_outbox`` into a :class:`Sink`, a batch per transaction.

    Per batch: lock rows (SKIP LOCKED), forward them (the sink commits in the bus), then stamp
    ``forwarded_at`` and commit the outbox. Killed between the two commits, the rows are taken
    again and the bus stores nothing new for them.
    """

    engine: Engine
    sink: Sink
    _: KW_ONLY
    batch_size: int = 500
    retention: timedelta = timedelta(days=7)
    interval: float = 1.0
    _stopping: bool = field(default=False, init=False)
    _last_purge: float = field(default=0.0, init=False)

    def run_once(self) -> int:
        """One batch; returns how many rows it took."""
        with self.engine.connect() as connection, connection.begin():
            rows = take_batch(connection, self.batch_size)
            if not rows:
                return 0
            outcome = self.sink.forward(rows)
            mark_forwarded(connection, outcome)
        for row_id, message in outcome.refused.items():
            log.warning("outbox row %s refused by the bus: %s", row_id, message)
        return len(outcome.done) + len(outcome.refused)

    def purge(self) -> int:
        with self.engine.begin() as connection:
            return purge(connection, self.retention)

    def run(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Forward until :meth:`stop`; a full batch is followed at once by the next, and
        forwarded rows past the retention are purged about once a minute."""
        while not self._stopping:
            try:
                taken = self.run_once()
            except Exception:
                log.exception("forward failed; trying again")
                taken = 0
            now = time.monotonic()
            if now - self._last_purge >= 60:
                self._last_purge = now
                try:
                    self.purge()
                except Exception:
                    log.exception("outbox purge failed")
            if taken < self.batch_size and not self._stopping:
                sleep(self.interval)

    def stop(self) -> None:
        self._stopping = True
