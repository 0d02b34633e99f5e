"""The status rules: the one place that decides what publishing and each status change mean.

The ``PUT`` route and the worker tasks both come here; neither re-implements a rule.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from bus import cursors, history, idempotency, logs, metrics, pages, repository
from bus.auth import Principal, require_reader, require_writer, resolve_tenant
from bus.dispatch import Dispatch
from bus.errors import (
    BatchItemInvalid,
    BusError,
    EventNotFound,
    EventsNotArray,
    FieldRequired,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InvalidField,
    InvalidJSONBody,
    TooManyEvents,
)
from bus.models import EventRow, EventStatus, SystemEvent
from bus.pages import Page
from bus.rules import save_change, utcnow
from bus.schemas import (
    ListQuery,
    NewEvent,
    StatusChange,
    event_view,
    format_timestamp,
    parse_new_event,
    parse_status_change,
    parse_uuid,
)
from bus.settings import LARGEST_EVENT_OVERHEAD, Settings
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
    No I/O, so a bad body is refused before it joins other publishes in a commit."""
    require_writer(principal)
    tenant_id = _acting_tenant(principal, tenant_param, creating=True)
    assert tenant_id is not None
    new = parse_new_event(body, settings.max_event_data_bytes)
    return _new_row(new, tenant_id, request_id, now or utcnow())


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
    tenant_id = _acting_tenant(principal, tenant_param, creating=True)
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
        rows.append(_new_row(new, tenant_id, request_id, now))
    return rows


def _new_row(
    new: NewEvent, tenant_id: uuid.UUID, request_id: str | None, now: datetime
) -> EventRow:
    return EventRow(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        event_type=new.event_type,
        source_module=new.source_module,
        target_module=new.target_module,
        entity_type=new.entity_type,
        entity_id=new.entity_id,
        event_data=new.event_data,
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
    ``bus.dispatch.group``) and metrics wait for the unit of work's commit. Returns the seed's
    event objects, in order.

    The sends are stamped optimistically in the same INSERT; a failed send unstamps them, and
    a crash in between is covered by the relay's lease. ``traces`` (tracing on, the API's
    group commit): the ``traceparent`` of each event's request, whose commit this one shares.
    """
    repository.insert_events(uow.session, [event.values() for event in events])
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
    ``IdempotencyKeyInProgress`` (see :mod:`bus.idempotency`).
    """
    assert events, "a publish stores at least one event"
    tenant_id = events[0].tenant_id
    session = uow.session
    if not idempotency.try_lock(session, tenant_id, key):
        raise IdempotencyKeyInProgress()
    now = now or utcnow()
    stored = idempotency.find(session, tenant_id, key, now)
    if stored is not None:
        if stored.fingerprint != request_fingerprint:
            raise IdempotencyKeyReused()
        return Answer(stored.status_code, stored.body.encode("utf-8"), replayed=True)
    body = render(store_published(uow, events))
    first = idempotency.StoredResponse(request_fingerprint, status_code, body.decode("utf-8"))
    ttl = timedelta(seconds=settings.idempotency_ttl_seconds)
    idempotency.store(session, tenant_id, key, first, now, ttl)
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
    outbox forwarder passes its row's id, so a forward repeated stores nothing new)."""
    new = parse_new_event(body, settings.max_event_data_bytes)
    row = _new_row(new, tenant_id, request_id, now or utcnow())
    if event_id is not None:
        row.id = event_id
    return row


def store_published_once(uow: UnitOfWork, events: Sequence[EventRow]) -> list[uuid.UUID]:
    """:func:`store_published` for events whose id may already be stored (the outbox
    forwarder's batch again after a crash): only the new ones are stored, sent and counted.
    Returns their ids. One already stored was sent when it was stored, or the relay sends it."""
    new = repository.insert_events_once(uow.session, [event.values() for event in events])
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


def _acting_tenant(
    principal: Principal, requested: str | None, *, creating: bool
) -> uuid.UUID | None:
    """:func:`bus.auth.resolve_tenant`, and the tenant named in the logs of the call from here."""
    tenant_id = resolve_tenant(principal, requested, creating=creating)
    logs.bind(tenant_id=tenant_id)
    return tenant_id


def list_events(
    session: Session,
    settings: Settings,
    principal: Principal,
    tenant_param: str | None,
    query: ListQuery,
) -> Page:
    """One page of the caller's events (every tenant's for a system admin naming none), its
    body within ``EVENTBUS_MAX_RESPONSE_BYTES``: a page that would pass it is cut
    (see :mod:`bus.pages`). The page is ``page``'s, or the one after ``cursor``'s position
    (``Invalid cursor`` unless this bus made it for this tenant and these filters); either way
    it carries the cursor of the page after it, null when none follows (one more row is read
    to know).

    Rows are read a few at a time, as many as a quarter of the budget holds at the largest
    event's size, so a request holds about the budget whatever the page.
    """
    require_reader(principal)
    tenant_id = _acting_tenant(principal, tenant_param, creating=False)
    key = cursors.derive_key(settings.signing_secret())
    after = None
    if query.cursor:
        position = cursors.decode(key, query.cursor, tenant_id, query.filters)
        after = (position.created_at, position.id)
    budget = settings.max_response_bytes
    largest = settings.max_event_data_bytes + LARGEST_EVENT_OVERHEAD
    batch = max(1, min(query.limit, budget // (4 * largest)))
    seen: list[cursors.Position] = []
    rows = _noting(
        repository.stream_page(session, tenant_id, query, batch, after=after, peek=1), seen
    )
    try:
        events, cut = pages.fit(itertools.islice(rows, query.limit), budget)
        more = cut or next(rows, None) is not None
    finally:
        rows.close()
    if after is None and not more and (events or query.page == 1):
        total = query.offset + len(events)  # this page ends the set: no COUNT needed
    else:
        total = repository.count_events(session, tenant_id, query)
    if after is None:
        page = pages.page_of(query, events, total, cut=cut)
    else:
        page = Page(events, None, len(events) if cut else query.limit, total)
    kept = len(page.events)
    if not (kept and (more or kept < len(events))):
        return page
    next_cursor = cursors.encode(key, seen[kept - 1], tenant_id, query.filters)
    return dataclasses.replace(page, next_cursor=next_cursor)


def _noting(
    rows: Generator[SystemEvent, None, None], seen: list[cursors.Position]
) -> Generator[SystemEvent, None, None]:
    """``rows``, noting the list position of each as it passes."""
    try:
        for row in rows:
            seen.append(cursors.Position(row.created_at, row.id))
            yield row
    finally:
        rows.close()


@dataclass(frozen=True, slots=True)
class Stats:
    """What an operator checks first: each module's events by status, and how long the oldest
    pending one has waited."""

    tenant_id: uuid.UUID | None
    generated_at: datetime
    modules: list[dict[str, Any]]
    totals: dict[str, int]
    oldest_pending_age_seconds: float | None
    series: list[dict[str, Any]] | None = None


_COUNTS = ("pending", "processed", "failed", "retry_scheduled")


SERIES_MINUTES = 60
"""``series=minute`` covers the 60 minutes that end with the current one."""


def event_stats(
    session: Session,
    principal: Principal,
    tenant_param: str | None,
    series: str | None = None,
    now: datetime | None = None,
) -> Stats:
    """``GET /system/events/stats``: counts by target module and status, with the same reader
    rule and tenancy as the list (a system admin naming no tenant sees every tenant's).

    ``failed`` counts every failed event; ``retry_scheduled`` those of them with a retry to
    come, so failed - retry_scheduled have given up and need a person.
    """
    require_reader(principal)
    tenant_id = _acting_tenant(principal, tenant_param, creating=False)
    now = now or utcnow()
    modules: list[dict[str, Any]] = []
    for row in repository.stats_by_module(session, tenant_id):
        view: dict[str, Any] = {"target_module": row.target_module}
        view.update({name: getattr(row, name) for name in _COUNTS})
        view["total"] = row.pending + row.processed + row.failed
        view["oldest_pending_age_seconds"] = _age(row.oldest_pending_created_at, now)
        modules.append(view)
    totals = {name: sum(m[name] for m in modules) for name in (*_COUNTS, "total")}
    ages = [m["oldest_pending_age_seconds"] for m in modules]
    known = [a for a in ages if a is not None]
    points = None if series is None else _minutes(session, tenant_id, now)
    return Stats(tenant_id, now, modules, totals, max(known) if known else None, points)


def _minutes(session: Session, tenant_id: uuid.UUID | None, now: datetime) -> list[dict[str, Any]]:
    """Handler attempts per minute and target module by outcome, oldest first, only minutes
    with one: what the operators' chart draws."""
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=SERIES_MINUTES - 1)
    return [
        {
            "minute": format_timestamp(point.minute),
            "target_module": point.target_module,
            "processed": point.processed,
            "failed": point.failed,
            "lost": point.lost,
        }
        for point in repository.outcomes_by_minute(session, tenant_id, since)
    ]


def _age(since: datetime | None, now: datetime) -> float | None:
    if since is None:
        return None
    return round(max(0.0, (now - since).total_seconds()), 3)


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
    tenant_id = _acting_tenant(principal, tenant_param, creating=False)
    uid = _event_uuid(event_id)
    change = parse_status_change(body)
    event = repository.lock_event(uow.session, uid, tenant_id)
    if event is None:
        raise EventNotFound()
    now = now or utcnow()
    save_change(uow, event, change, now, entry=_reported(event, change, now))
    return event_view(event)


def _event_uuid(event_id: str) -> uuid.UUID:
    """The id of a path: one that is no UUID in its canonical 8-4-4-4-12 form (any case) names
    no event (404, as an unknown one). ``uuid.UUID`` alone would also take ``urn:uuid:…``,
    ``{…}`` and 32 bare hex digits: several spellings of one event, which a cache or a WAF
    rule keyed on the path would count apart."""
    try:
        return parse_uuid(event_id, "event_id")
    except InvalidField as exc:
        raise EventNotFound() from exc


def _reported(event: EventRow, change: StatusChange, now: datetime) -> history.Entry | None:
    """The history entry of a ``PUT``: one when it changes the status to processed or failed."""
    if change.status == event.status or change.status is EventStatus.PENDING:
        return None
    return history.Entry(
        event.id,
        history.Outcome(change.status.value),
        now,
        error_message=change.error_message,
        worker=history.this_process(),
        source=history.Source.API,
    )


@dataclass(frozen=True, slots=True)
class Detail:
    """One event as ``GET /system/events/{id}`` shows it."""

    event: dict[str, Any]
    attempts: list[dict[str, Any]]
    attempts_total: int
    """Entries in the history; ``attempts`` holds the last ``history.SHOWN_ATTEMPTS`` of them."""
    next_attempt_at: str | None


def event_detail(
    session: Session, principal: Principal, event_id: str, tenant_param: str | None
) -> Detail:
    """``GET /system/events/{id}``: the seed's event object, the last entries of its attempt
    history (oldest first, bounded: :func:`bus.history.last`), and when its automatic retry is
    due (None: none is), with the list's reader rule and tenancy (a system admin naming no
    tenant reads any tenant's event). An id that is no UUID, or names an event outside the
    tenant, is not found.
    """
    require_reader(principal)
    tenant_id = _acting_tenant(principal, tenant_param, creating=False)
    uid = _event_uuid(event_id)
    # The tenant is in the lookup: another tenant's event is never read, so its 404 costs what
    # an unknown id's does, whatever the event's size.
    event = repository.read_event(session, uid, tenant_id)
    if event is None:
        raise EventNotFound()
    due = format_timestamp(event.next_attempt_at) if event.next_attempt_at else None
    shown = history.last(session, uid)
    return Detail(event_view(event), shown.entries, shown.total, due)
