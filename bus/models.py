"""The event table: the seed's fields plus the bus's dispatch bookkeeping."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
    """When a message was last handed to the broker; null: never sent, or the send failed."""
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When the next retry is due after a failure; null when none is scheduled."""
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The publishing request's id, carried into worker logs."""

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'processed', 'failed')", name="status"),
        # Tenant-scoped pages, newest first; the trailing id makes the order total.
        Index("ix_events_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_events_tenant_status_created", "tenant_id", "status", "created_at", "id"),
        Index(
            "ix_events_tenant_target_status_created",
            "tenant_id",
            "target_module",
            "status",
            "created_at",
            "id",
        ),
        Index("ix_events_tenant_type_created", "tenant_id", "event_type", "created_at", "id"),
        Index("ix_events_tenant_source_created", "tenant_id", "source_module", "created_at"),
        Index("ix_events_tenant_entity_created", "tenant_id", "entity_type", "created_at"),
        # The list's exact ``total``: a COUNT reads every matching entry, so it reads the
        # narrowest index that has them; repeated keys are deduplicated, so it stays small
        # (a tenant's, or a tenant's events of one status, are one run of it).
        Index("ix_events_tenant_status", "tenant_id", "status"),
        # A system admin's all-tenant listing.
        Index("ix_events_created", "created_at", "id"),
        # The relay's two scans stay small: only rows that may need a send.
        Index(
            "ix_events_relay_pending",
            "dispatched_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(
            "ix_events_relay_failed",
            "next_attempt_at",
            postgresql_where=text("status = 'failed' AND next_attempt_at IS NOT NULL"),
            sqlite_where=text("status = 'failed' AND next_attempt_at IS NOT NULL"),
        ),
    )
