"""One event as ``GET /system/events/{id}`` shows it: the seed's object, its attempts,
and when a failed event's retry is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bus.auth import Principal, acting_tenant, require_reader
from bus.errors import (
    EventNotFound,
)
from bus.events.schemas import (
    event_uuid,
    event_view,
    format_timestamp,
)
from bus.storage import attempt_store, delivery_store, event_store
from bus.webhooks.views import delivery_view

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class Detail:
    """One event as ``GET /system/events/{id}`` shows it."""

    event: dict[str, Any]
    attempts: list[dict[str, Any]]
    attempts_total: int
    """Entries in the history; ``attempts`` holds the last ``attempt_store.SHOWN_ATTEMPTS`` of
    them."""
    next_attempt_at: str | None
    deliveries: list[dict[str, Any]]
    """Its outcome with each webhook endpoint it went to (``bus.webhooks``)."""


def event_detail(
    session: Session, principal: Principal, event_id: str, tenant_param: str | None
) -> Detail:
    """``GET /system/events/{id}``: the seed's event object, the last entries of its attempt
    history (oldest first, bounded: :func:`bus.storage.attempt_store.last`), and when its automatic
    retry is
    due (None: none is), with the list's reader rule and tenancy (a system admin naming no
    tenant reads any tenant's event). An id that is no UUID, or names an event outside the
    tenant, is not found.
    """
    require_reader(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    uid = event_uuid(event_id)
    # The tenant is in the lookup: another tenant's event is never read, so its 404 costs what
    # an unknown id's does, whatever the event's size.
    event = event_store.read_event(session, uid, tenant_id)
    if event is None:
        raise EventNotFound()
    due = format_timestamp(event.next_attempt_at) if event.next_attempt_at else None
    shown = attempt_store.last(session, uid)
    deliveries = [delivery_view(d) for d in delivery_store.of_event(session, uid, tenant_id)]
    return Detail(event_view(event), shown.entries, shown.total, due, deliveries)
