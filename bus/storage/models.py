"""The event table: the seed's fields plus the bus's dispatch bookkeeping."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    and_,
    or_,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement


class EventStatus(StrEnum):
    PENDING = "pending"
    PROCESSED = "processed"
    FAILED = "failed"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONObject = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SystemEvent(Base):
    """One published event and where it stands."""

    __tablename__ = "system_events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    event_type: Mapped[str] = mapped_column(String(255))
    source_module: Mapped[str] = mapped_column(String(64))
    target_module: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(255))
    entity_id: Mapped[str] = mapped_column(String(255))
    event_data: Mapped[dict[str, Any]] = mapped_column(JSONObject)
    status: Mapped[str] = mapped_column(String(16), default=EventStatus.PENDING)
    retry_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)

    # Bus bookkeeping, never shown in the seed's envelopes.
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When a message was handed to the broker as of the last status change (the publish's or
    the rules' stamp). The relay's stamps after that are kept in :data:`event_queue` only."""
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When the next retry is due after a failure; null when none is scheduled."""
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The publishing request's id, carried into worker logs."""

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'processed', 'failed')", name="status"),
        # Tenant-scoped pages, newest first; the trailing id makes the order total. No index
        # holds a column a status change writes (status, retry_count, processed_at,
        # error_message, next_attempt_at, dispatched_at): a completion is then a HOT update,
        # which writes no index entry (partitions keep free room for it: ``FILLFACTOR``).
        # Lists by status read the in-flight set (:data:`event_queue`) where they can.
        Index("ix_events_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_events_tenant_target_created", "tenant_id", "target_module", "created_at", "id"),
        Index("ix_events_tenant_type_created", "tenant_id", "event_type", "created_at", "id"),
        Index("ix_events_tenant_source_created", "tenant_id", "source_module", "created_at"),
        Index("ix_events_tenant_entity_created", "tenant_id", "entity_type", "created_at"),
        # A system admin's all-tenant listing.
        Index("ix_events_created", "created_at", "id"),
    )


FILLFACTOR = 50
"""Percent of a history page filled by inserts (``EVENTBUS_HISTORY_FILLFACTOR``'s default):
the rest is where an event's new version goes when its status changes, on the same page (a HOT
update). A completion changes only columns no index holds, so with room on the page it writes
no index entry at all; at 50 every event of a page can change in one transaction, as a
worker's batch does (measured: 500 of 500 updates HOT at 50, 356 at 60, 138 at 80)."""


@dataclass(slots=True, kw_only=True)
class EventRow:
    """One row of ``system_events`` read through Core, or one about to be written: the
    columns of :class:`SystemEvent` and nothing else.

    The hot paths (a publish's new rows, a worker's claims, a ``PUT``'s locked row) use it
    instead of the mapped class, whose instrumented attributes cost more to build and to set
    than the statement that reads the row. ``tests/unit`` checks the two keep the same fields.
    """

    id: uuid.UUID
    tenant_id: uuid.UUID
    event_type: str
    source_module: str
    target_module: str
    entity_type: str
    entity_id: str
    event_data: dict[str, Any]
    status: str
    retry_count: int
    created_at: datetime
    processed_at: datetime | None
    error_message: str | None
    dispatched_at: datetime | None
    next_attempt_at: datetime | None
    request_id: str | None

    def values(self) -> dict[str, Any]:
        """Every column's value, for an INSERT."""
        return {name: getattr(self, name) for name in EVENT_COLUMNS}


EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EventRow))


class WorkerHeartbeat(Base):
    """A worker's last sign of life for one module it serves (see
    :mod:`bus.storage.heartbeat_store`)."""

    __tablename__ = "worker_heartbeats"

    queue_prefix: Mapped[str] = mapped_column(String(64), primary_key=True)
    """EVENTBUS_QUEUE_PREFIX of the worker: buses sharing a database do not vouch for each
    other's queues."""
    module: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker: Mapped[str] = mapped_column(String(255), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


COUNT_KEY = ("tenant_id", "event_type", "source_module", "target_module", "entity_type", "status")
"""What the list filters on: the key of the counts kept as data (migration 0004)."""


def _count_key() -> list[Column[Any]]:
    return [
        Column("tenant_id", Uuid(), nullable=False),
        Column("event_type", String(255), nullable=False),
        Column("source_module", String(64), nullable=False),
        Column("target_module", String(64), nullable=False),
        Column("entity_type", String(255), nullable=False),
        Column("status", String(16), nullable=False),
    ]


event_queue = Table(
    "event_queue",
    Base.metadata,
    Column("id", Uuid(), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
    *_count_key(),  # what the list filters on, status included
    Column("entity_id", String(255), nullable=False),
    Column("due_at", UTCDateTime(), nullable=True),
    Column("dispatched_at", UTCDateTime(), nullable=True),
    Column("request_id", String(64), nullable=True),
    # The scheduler's (migration 0011): a worker's claim, and whether a failed event of an
    # ordered handler holds its key. Every status change of the event clears all four. No
    # index names them, and pages are half free (QUEUE_FILLFACTOR): a claim's stamp is a HOT
    # update. Which processes hold claims is in claim_holders.
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("claimed_by", String(255), nullable=True),
    Column("claimed_pid", Integer, nullable=True),
    Column("hold", String(8), nullable=True),
    CheckConstraint("status IN ('pending', 'failed')", name="status"),
    CheckConstraint("hold IN ('block', 'skip', 'released')", name="hold"),
    # The lists by status (a tenant's, and a tenant's of one module), newest first, and the
    # oldest pending event of a module.
    Index("ix_event_queue_tenant_status_created", "tenant_id", "status", "created_at", "id"),
    Index(
        "ix_event_queue_tenant_target_status_created",
        "tenant_id",
        "target_module",
        "status",
        "created_at",
        "id",
    ),
    # A claim: a module's tenants (a skip scan), then each tenant's events in commit order.
    Index("ix_event_queue_target_tenant_created", "target_module", "tenant_id", "created_at", "id"),
    # Per-entity order: the events of one key before a given one.
    Index(
        "ix_event_queue_key",
        "target_module",
        "tenant_id",
        "entity_type",
        "entity_id",
        "created_at",
        "id",
    ),
)
"""The in-flight set: one row per event of ``system_events`` that is not processed (pending,
or failed: ``due_at`` is its retry's time, or null when none is to come), with what the relay,
the lists by status and the scheduler read. Its size follows the backlog (and the failures
waiting for a person), not the history. Kept by the database in the transaction that writes
the event (triggers of migration 0010, PostgreSQL and SQLite alike), so no writer of
``system_events`` can forget it; the relay's send stamp (``dispatched_at``) is kept here only.
"""


QUEUED_EVENT = and_(
    SystemEvent.__table__.c.id == event_queue.c.id,
    SystemEvent.__table__.c.created_at == event_queue.c.created_at,
)
"""An event's row of :data:`event_queue` joined to its history row (created_at too: the
partition key, so the history is read in the event's own day)."""

RETRY_TO_COME = and_(event_queue.c.status == EventStatus.FAILED, event_queue.c.due_at.is_not(None))
"""A row of :data:`event_queue` that failed with an automatic retry to come."""


def due_by(now: datetime) -> ColumnElement[bool]:
    """An event of :data:`event_queue` to run by ``now``: pending (whatever its clock said when
    it was made), or failed with its retry's time come."""
    return or_(
        event_queue.c.status == EventStatus.PENDING,
        and_(event_queue.c.status == EventStatus.FAILED, event_queue.c.due_at <= now),
    )


QUEUE_FILLFACTOR = 50
"""``event_queue``'s pages are filled to half by inserts (migration 0012), so a claim's stamp
finds room for the row's new version on its own page."""

claim_holders = Table(
    "claim_holders",
    Base.metadata,
    Column("worker", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("target_module", String(64), nullable=False),
    Column("until", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("worker", "pid", "target_module"),
)
"""Worker processes that claimed events of a module, with their latest claim's end: where a
process that died may hold claims (one row per process and module, written by each claim),
so the set's rows need no index on who claimed them."""


module_pauses = Table(
    "module_pauses",
    Base.metadata,
    Column("target_module", String(64), primary_key=True),
    Column("paused_at", UTCDateTime(), nullable=False),
    Column("reason", String(255), nullable=True),
)
"""Modules an operator paused: no worker claims their events until they are resumed."""

tenant_usage = Table(
    "tenant_usage",
    Base.metadata,
    Column("target_module", String(64), nullable=False),
    Column("tenant_id", Uuid(), nullable=False),
    Column("seconds", Float, nullable=False),
    Column("events", Float, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("target_module", "tenant_id"),
)
"""Handler time each tenant used in each module, decayed (half-life
``bus.delivery.fairness.HALF_LIFE_SECONDS``): what a claim's fair order is computed from.
``events`` decays alike, so ``seconds / events`` is the tenant's recent cost of one event."""


event_counts = Table(
    "event_counts",
    Base.metadata,
    *_count_key(),
    Column("n", BigInteger, nullable=False),
    PrimaryKeyConstraint(*COUNT_KEY),
)
"""Events per key, folded (one row per key); with :data:`event_count_changes`, exact."""

event_count_changes = Table(
    "event_count_changes",
    Base.metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    *_count_key(),
    Column("n", BigInteger, nullable=False),
    Index("ix_event_count_changes_tenant", "tenant_id"),
)
"""What each statement on ``system_events`` changed in the counts (PostgreSQL triggers),
appended in the writing transaction until the relay folds it into :data:`event_counts`."""


idempotency_keys = Table(
    "idempotency_keys",
    Base.metadata,
    Column("tenant_id", Uuid(), nullable=False),
    Column("key", String(255), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("tenant_id", "key"),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)
"""A publish's ``Idempotency-Key`` (per tenant) and the response it was answered, stored in
the publish's own transaction (see :mod:`bus.storage.idempotency_store`). ``response`` is the
body's exact
text, not jsonb: a replay answers the same bytes (jsonb would reorder keys)."""


ATTEMPT_OUTCOMES = ("processed", "failed", "lost")
ATTEMPT_SOURCES = ("worker", "api")

event_attempts = Table(
    "event_attempts",
    Base.metadata,
    # An INTEGER on SQLite, where only that is the rowid (which numbers itself).
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True),
    Column("event_id", Uuid(), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error_message", Text, nullable=True),
    Column("worker", String(255), nullable=True),
    Column("source", String(8), nullable=False),
    CheckConstraint("outcome IN ('processed', 'failed', 'lost')", name="outcome"),
    CheckConstraint("source IN ('worker', 'api')", name="source"),
    # One event's history in order; unique, so two writers can never give one number twice.
    Index("ix_event_attempts_event_attempt", "event_id", "attempt", unique=True),
    # The retention purge reads the oldest entries only.
    Index("ix_event_attempts_finished_at", "finished_at"),
)
"""Each event's attempt history (see :mod:`bus.storage.attempt_store`): appended in the transaction
that
records the outcome, purged after ``EVENTBUS_ATTEMPTS_RETENTION_DAYS``. No foreign key: the
history outlives nothing, and ``TRUNCATE system_events`` (tests, benches) stays possible."""

event_outcome_minutes = Table(
    "event_outcome_minutes",
    Base.metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True),
    Column("tenant_id", Uuid(), nullable=False),
    Column("target_module", String(64), nullable=False),
    Column("minute", UTCDateTime(), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("n", BigInteger, nullable=False),
    # The chart reads the last hour; the relay folds and purges by minute.
    Index("ix_event_outcome_minutes_minute", "minute"),
)
"""Handler outcomes per (tenant, target module, minute, outcome), appended by a PostgreSQL
trigger on :data:`event_attempts` (migration 0007), folded per closed minute by the relay."""

restored_days = Table(
    "restored_days",
    Base.metadata,
    Column("partition", String(63), primary_key=True),
    Column("restored_at", UTCDateTime(), nullable=False),
    Column("keep_until", UTCDateTime(), nullable=False),
)
"""History partitions brought back from an archive (``eventbus archive restore``), each kept
out of the retention's drops until ``keep_until`` (see :mod:`bus.storage.archive_store`)."""


class EndpointFormat(StrEnum):
    """How a webhook endpoint's deliveries are written: the seed's event object as the JSON
    body, or a CloudEvents 1.0 envelope (structured: the whole envelope as the body; binary:
    the attributes as ``ce-*`` headers)."""

    SEED = "seed"
    CLOUDEVENTS_STRUCTURED = "cloudevents-structured"
    CLOUDEVENTS_BINARY = "cloudevents-binary"


ENDPOINT_FORMATS = tuple(f.value for f in EndpointFormat)

webhook_endpoints = Table(
    "webhook_endpoints",
    Base.metadata,
    Column("id", Uuid(), primary_key=True),
    Column("tenant_id", Uuid(), nullable=False),
    Column("target_module", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("event_types", JSONObject, nullable=True),
    Column("format", String(32), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("ordered", Boolean, nullable=False),
    Column("secrets", JSONObject, nullable=False),
    Column("disabled_reason", String(255), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # Migration 0014: since when every delivery failed (null after a 2xx), which disables it
    # after EVENTBUS_WEBHOOK_DISABLE_AFTER_SECONDS; written on the change only, never per 2xx.
    Column("failing_since", UTCDateTime(), nullable=True),
    CheckConstraint(
        "format IN ('seed', 'cloudevents-structured', 'cloudevents-binary')", name="format"
    ),
    # A tenant's list, oldest first; a worker's endpoints of a module and tenant.
    Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at", "id"),
    Index("ix_webhook_endpoints_target_tenant", "target_module", "tenant_id"),
)
"""Webhook endpoints (migration 0013): HTTP receivers of a tenant's events of one target
module (``event_types``: null for all of them). ``secrets`` is a JSON list, newest first, of
``{"secret": "whsec_…", "expires_at": null | RFC 3339}``: the current secret, and during a
rotation the previous one until it expires (see :mod:`bus.storage.endpoint_store`)."""


class DeliveryStatus(StrEnum):
    """Where an event stands with one endpoint: ``acknowledged`` (a 2xx: never sent again),
    ``failed`` (its last request failed), ``waiting`` (the endpoint is disabled)."""

    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"
    WAITING = "waiting"


webhook_deliveries = Table(
    "webhook_deliveries",
    Base.metadata,
    Column("event_id", Uuid(), primary_key=True),
    Column("endpoint_id", Uuid(), primary_key=True),
    Column("tenant_id", Uuid(), nullable=False),
    Column("event_created_at", UTCDateTime(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("requests", Integer, nullable=False),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_attempt_at", UTCDateTime(), nullable=True),
    Column("acknowledged_at", UTCDateTime(), nullable=True),
    CheckConstraint("status IN ('acknowledged', 'failed', 'waiting')", name="status"),
    # An endpoint's deliveries by status, newest first (its last failures; the events waiting
    # for it when it is enabled again).
    Index("ix_webhook_deliveries_endpoint_status", "endpoint_id", "status", "last_attempt_at"),
    # Retention: rows of events past EVENTBUS_RETENTION_DAYS.
    Index("ix_webhook_deliveries_event_created", "event_created_at"),
)
"""Each event's outcome with each endpoint it went to (migration 0014): one row per (event,
endpoint), written with the event's attempt outcome, so a retry or a replay sends only to the
endpoints that have not answered 2xx. Deleted with the event's day by the retention."""
