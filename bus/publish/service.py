"""Publishing: a body checked by the input rules becomes an event row, stored and sent.

The API's group commit (``api/publishing.py``) calls :func:`prepare_publish` or
:func:`prepare_batch` per request, then :func:`store_published` (or, with an
``Idempotency-Key``, :func:`publish_once`) for the whole group in one unit of work; the
outbox forwarder stores with :func:`new_event` and :func:`store_published_once`. Each
stored event's message is sent once the unit of work has committed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bus.auth import Principal, acting_tenant, require_writer
from bus.broker.dispatch import Dispatch
from bus.errors import (
    BatchItemInvalid,
    BusError,
    EventsNotArray,
    FieldRequired,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InvalidJSONBody,
    TooManyEvents,
)
from bus.events import cloudevents
from bus.events.ids import created_at_of, new_event_id
from bus.events.rules import utcnow
from bus.events.schemas import (
    NewEvent,
    event_view,
    parse_new_event,
)
from bus.observability import metrics
from bus.publish import idempotency
from bus.settings import Settings
from bus.storage import event_store, idempotency_store
from bus.storage.models import EventRow, EventStatus
from bus.uow import UnitOfWork

log = logging.getLogger(__name__)


def publish(
    uow: UnitOfWork,
    settings: Settings,
    principal: Principal,
    tenant_param: str | None,
    body: Any,
    *,
    request_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One publish in its own unit of work (the API gathers concurrent ones: see
    :func:`prepare_publish` and :func:`store_published`)."""
    event = prepare_publish(settings, principal, tenant_param, body, request_id=request_id, now=now)
    return store_published(uow, [event])[0]


def prepare_publish(
    settings: Settings,
    principal: Principal,
    tenant_param: str | None,
    body: Any,
    *,
    request_id: str | None = None,
    now: datetime | None = None,
) -> EventRow:
    """A checked publish, ready to store: the caller's right, its tenant, the body's rules.
    No I/O, so a bad body is refused before it joins other publishes in a commit. ``body``:
    the seed's JSON body, or a :class:`bus.events.cloudevents.CloudEvent` (mapped onto it by
    :func:`bus.events.cloudevents.parse_cloudevent`)."""
    require_writer(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=True)
    assert tenant_id is not None
    if isinstance(body, cloudevents.CloudEvent):
        new = cloudevents.parse_cloudevent(body, settings.max_event_data_bytes)
    else:
        new = parse_new_event(body, settings.max_event_data_bytes)
    return _new_row(new, tenant_id, request_id, now or utcnow())


def publish_key(header_key: str | None, body: Any) -> str | None:
    """A publish's idempotency key: its ``Idempotency-Key``, else for a CloudEvent its
    ``source`` and ``id`` (:func:`bus.publish.idempotency.cloudevent_key`: the same event sent
    again is answered the first response, another one with the same pair is a 422), else none.
    Asked once :func:`prepare_publish` has accepted ``body``."""
    if header_key is not None or not isinstance(body, cloudevents.CloudEvent):
        return header_key
    return idempotency.cloudevent_key(*cloudevents.identity(body))


def prepare_batch(
    settings: Settings,
    principal: Principal,
    tenant_param: str | None,
    body: Any,
    *,
    request_id: str | None = None,
    now: datetime | None = None,
) -> list[EventRow]:
    """``POST /system/events/batch``: every item checked by the publish's rules, all or nothing
    (``events[<index>]: <the publish's message>`` names the first that fails)."""
    require_writer(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=True)
    assert tenant_id is not None
    if not isinstance(body, dict):
        raise InvalidJSONBody()
    items = body.get("events")
    if items is None or items == []:
        raise FieldRequired("events")
    if not isinstance(items, list):
        raise EventsNotArray()
    if len(items) > settings.max_batch:
        raise TooManyEvents()
    now = now or utcnow()
    rows: list[EventRow] = []
    for index, item in enumerate(items):
        try:
            new = parse_new_event(item, settings.max_event_data_bytes)
        except BusError as exc:
            raise BatchItemInvalid(index, exc) from exc
        # A microsecond apart, in the request's order: the order the bus committed them, which
        # ordered handlers keep per entity (ids alone are random within a millisecond).
        rows.append(_new_row(new, tenant_id, request_id, now + index * _MICROSECOND))
    return rows


_MICROSECOND = timedelta(microseconds=1)


def _new_row(
    new: NewEvent, tenant_id: uuid.UUID, request_id: str | None, now: datetime
) -> EventRow:
    return EventRow(
        id=new_event_id(now),
        tenant_id=tenant_id,
        **new.published(),
        status=EventStatus.PENDING,
        retry_count=0,
        created_at=now,
        processed_at=None,
        error_message=None,
        dispatched_at=now,
        next_attempt_at=None,
        request_id=request_id,
    )


def store_published(
    uow: UnitOfWork, events: Sequence[EventRow], traces: Sequence[str | None] | None = None
) -> list[dict[str, Any]]:
    """Store checked publishes in one INSERT; their sends (one message per module, see
    ``bus.broker.dispatch.group``) and metrics wait for the unit of work's commit. Returns the
    seed's
    event objects, in order.

    The sends are stamped optimistically in the same INSERT; a failed send unstamps them, and
    a crash in between is covered by the relay's lease. ``traces`` (tracing on, the API's
    group commit): the ``traceparent`` of each event's request, whose commit this one shares.
    """
    event_store.insert_events(uow.session, [event.values() for event in events])
    if traces:
        for event, trace in zip(events, traces, strict=True):
            uow.send(Dispatch(event.id, event.target_module, event.request_id, trace=trace))
    else:
        for event in events:
            uow.send(Dispatch(event.id, event.target_module, request_id=event.request_id))
    uow.after_commit(lambda: _published(events))
    return [event_view(event) for event in events]


@dataclass(frozen=True, slots=True)
class Answer:
    """A keyed publish's response: the first one, or the stored one again (``replayed``)."""

    status_code: int
    body: bytes
    replayed: bool


def publish_once(
    uow: UnitOfWork,
    settings: Settings,
    key: str,
    request_fingerprint: str,
    events: Sequence[EventRow],
    render: Callable[[list[dict[str, Any]]], bytes],
    *,
    status_code: int = 201,
    now: datetime | None = None,
) -> Answer:
    """A publish (or batch) carrying an ``Idempotency-Key``, checked already: stored once per
    (tenant, key) within ``EVENTBUS_IDEMPOTENCY_TTL_SECONDS``.

    ``render`` turns the stored events' views into the response body; that exact body is kept
    with the key in this unit of work, so a commit holds the events and their answer or
    neither. The same key again: the same request is answered that body (nothing stored), a
    different one is ``IdempotencyKeyReused``; a key whose first request is still in flight is
    ``IdempotencyKeyInProgress`` (see :mod:`bus.storage.idempotency_store`).
    """
    assert events, "a publish stores at least one event"
    tenant_id = events[0].tenant_id
    session = uow.session
    if not idempotency_store.try_lock(session, tenant_id, key):
        raise IdempotencyKeyInProgress()
    now = now or utcnow()
    stored = idempotency_store.find(session, tenant_id, key, now)
    if stored is not None:
        if stored.fingerprint != request_fingerprint:
            raise IdempotencyKeyReused()
        return Answer(stored.status_code, stored.body.encode("utf-8"), replayed=True)
    body = render(store_published(uow, events))
    first = idempotency_store.StoredResponse(request_fingerprint, status_code, body.decode("utf-8"))
    ttl = timedelta(seconds=settings.idempotency_ttl_seconds)
    idempotency_store.store(session, tenant_id, key, first, now, ttl)
    return Answer(status_code, body, replayed=False)


def new_event(
    body: Any,
    settings: Settings,
    tenant_id: uuid.UUID,
    *,
    event_id: uuid.UUID | None = None,
    request_id: str | None = None,
    now: datetime | None = None,
) -> EventRow:
    """A publish body checked by the API's rules, as a row to store, with the id given (the
    outbox forwarder passes its row's id, so a forward repeated stores nothing new). A UUIDv7
    given names the event's ``created_at`` (when it was written to the outbox): the history
    finds an event by its id's time (``bus.events.ids``)."""
    new = parse_new_event(body, settings.max_event_data_bytes)
    row = _new_row(new, tenant_id, request_id, now or utcnow())
    if event_id is not None:
        row.id = event_id
        row.created_at = created_at_of(event_id) or row.created_at
    return row


def store_published_once(uow: UnitOfWork, events: Sequence[EventRow]) -> list[uuid.UUID]:
    """:func:`store_published` for events whose id may already be stored (the outbox
    forwarder's batch again after a crash): only the new ones are stored, sent and counted.
    Returns their ids. One already stored was sent when it was stored, or the relay sends it."""
    new = event_store.insert_events_once(uow.session, [event.values() for event in events])
    fresh = [event for event in events if event.id in new]
    for event in fresh:
        uow.send(Dispatch(event.id, event.target_module, request_id=event.request_id))
    uow.after_commit(lambda: _published(fresh))
    return [event.id for event in fresh]


def _published(events: Sequence[EventRow]) -> None:
    for event in events:
        metrics.count_published(event.target_module, event.event_type)
        log.info(
            "event published for %s/%s",
            event.target_module,
            event.event_type,
            extra={
                "event_id": event.id,
                "tenant_id": event.tenant_id,
                "request_id": event.request_id,
            },
        )
