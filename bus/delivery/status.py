"""An outcome reported over HTTP (``PUT /system/events/{id}``): the same status rules
(:mod:`bus.events.rules`) a worker's attempt applies, and an attempt-history entry for it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bus.auth import Principal, acting_tenant, require_writer
from bus.errors import (
    EventNotFound,
)
from bus.events.rules import save_change, utcnow
from bus.events.schemas import (
    StatusChange,
    event_uuid,
    event_view,
    parse_status_change,
)
from bus.settings import Settings
from bus.storage import attempt_store, event_store
from bus.storage.models import EventRow, EventStatus
from bus.uow import UnitOfWork


def update_status(
    uow: UnitOfWork,
    settings: Settings,
    principal: Principal,
    event_id: str,
    tenant_param: str | None,
    body: Any,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``PUT /system/events/{id}``: apply a status change reported from outside the bus.

    ``pending`` sends the event again (a manual retry or replay). ``failed`` records the failure
    and schedules no automatic retry: the schedule belongs to attempts the bus made itself.
    A change of status to processed or failed appends an ``api`` entry to the event's attempt
    history; to pending none (the replayed run is the worker's to record).
    """
    require_writer(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    uid = event_uuid(event_id)
    change = parse_status_change(body)
    event = event_store.lock_event(uow.session, uid, tenant_id)
    if event is None:
        raise EventNotFound()
    now = now or utcnow()
    save_change(uow, event, change, now, entry=_reported(event, change, now))
    return event_view(event)


def _reported(event: EventRow, change: StatusChange, now: datetime) -> attempt_store.Entry | None:
    """The history entry of a ``PUT``: one when it changes the status to processed or failed."""
    if change.status == event.status or change.status is EventStatus.PENDING:
        return None
    return attempt_store.Entry(
        event.id,
        attempt_store.Outcome(change.status.value),
        now,
        error_message=change.error_message,
        worker=attempt_store.this_process(),
        source=attempt_store.Source.API,
    )
