"""Webhook deliveries: the SQL of ``webhook_deliveries`` (the rules are
``bus.webhooks.delivery``): one row per (event, endpoint), written with the event's attempt.

Reads that a caller makes name the tenant it acts in, or ``None`` for every tenant (a system
admin naming none), as the events' do.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, case, delete, select, true, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from bus.storage.models import DeliveryStatus, event_queue, webhook_deliveries

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_table: Table = webhook_deliveries


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One event's outcome with one endpoint, as an attempt writes it (``requests``: how many
    this attempt sent, 0 or 1; added to the stored count)."""

    event_id: uuid.UUID
    endpoint_id: uuid.UUID
    tenant_id: uuid.UUID
    event_created_at: datetime
    status: str
    requests: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    acknowledged_at: datetime | None = None


def acknowledged(
    session: Session, event_ids: Collection[uuid.UUID]
) -> set[tuple[uuid.UUID, uuid.UUID]]:
    """The (event, endpoint) pairs of these events that answered 2xx: never sent again."""
    if not event_ids:
        return set()
    stmt = select(_table.c.event_id, _table.c.endpoint_id).where(
        _table.c.event_id.in_(list(event_ids)),
        _table.c.status == DeliveryStatus.ACKNOWLEDGED,
    )
    return {(event_id, endpoint_id) for event_id, endpoint_id in session.execute(stmt)}


def save(session: Session, rows: Sequence[DeliveryRow]) -> None:
    """Write a batch's outcomes in one statement: a new row, or the stored one updated (its
    request count added to; an acknowledgement is never undone)."""
    if not rows:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(_table)
    stored = _table.c
    acked = stored.status == DeliveryStatus.ACKNOWLEDGED
    values = [
        {
            "event_id": r.event_id,
            "endpoint_id": r.endpoint_id,
            "tenant_id": r.tenant_id,
            "event_created_at": r.event_created_at,
            "status": r.status,
            "requests": r.requests,
            "last_status_code": r.last_status_code,
            "last_error": r.last_error,
            "last_attempt_at": r.last_attempt_at,
            "acknowledged_at": r.acknowledged_at,
        }
        for r in rows
    ]
    excluded = stmt.excluded
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["event_id", "endpoint_id"],
            set_={
                "status": case((acked, stored.status), else_=excluded.status),
                "requests": stored.requests + excluded.requests,
                "last_status_code": case(
                    (excluded.requests > 0, excluded.last_status_code),
                    else_=stored.last_status_code,
                ),
                "last_error": case(
                    (excluded.requests > 0, excluded.last_error), else_=stored.last_error
                ),
                "last_attempt_at": case(
                    (excluded.requests > 0, excluded.last_attempt_at),
                    else_=stored.last_attempt_at,
                ),
                "acknowledged_at": case(
                    (acked, stored.acknowledged_at), else_=excluded.acknowledged_at
                ),
            },
        ),
        values,
    )


def _in_tenant(tenant_id: uuid.UUID | None) -> Any:
    return true() if tenant_id is None else _table.c.tenant_id == tenant_id


def of_event(
    session: Session, event_id: uuid.UUID, tenant_id: uuid.UUID | None
) -> list[dict[str, Any]]:
    """An event's deliveries, by endpoint (oldest attempt first)."""
    stmt = (
        select(_table)
        .where(_table.c.event_id == event_id, _in_tenant(tenant_id))
        .order_by(_table.c.last_attempt_at, _table.c.endpoint_id)
    )
    return [dict(row) for row in session.execute(stmt).mappings()]


def of_endpoint(
    session: Session, endpoint_id: uuid.UUID, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """An endpoint's latest deliveries (of ``status`` when given), newest first."""
    stmt = select(_table).where(_table.c.endpoint_id == endpoint_id)
    if status is not None:
        stmt = stmt.where(_table.c.status == status)
    stmt = stmt.order_by(_table.c.last_attempt_at.desc().nulls_last()).limit(limit)
    return [dict(row) for row in session.execute(stmt).mappings()]


def waiting_events(session: Session, endpoint_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
    """Events that wait for this (disabled) endpoint, at most ``limit``."""
    stmt = (
        select(_table.c.event_id)
        .where(_table.c.endpoint_id == endpoint_id, _table.c.status == DeliveryStatus.WAITING)
        .limit(limit)
    )
    return [event_id for (event_id,) in session.execute(stmt)]


def purge_before(session: Session, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` rows of finished events created before ``cutoff`` (the
    retention: an event still in flight keeps its acknowledgements)."""
    in_flight = select(event_queue.c.id).where(event_queue.c.id == _table.c.event_id).exists()
    doomed = (
        select(_table.c.event_id, _table.c.endpoint_id)
        .where(_table.c.event_created_at < cutoff, ~in_flight)
        .limit(limit)
    )
    result = session.execute(
        delete(_table).where(tuple_(_table.c.event_id, _table.c.endpoint_id).in_(doomed))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
