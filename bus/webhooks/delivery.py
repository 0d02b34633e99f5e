"""Webhook delivery's rules: which endpoints an attempt sends an event to, and what their
answers make of the event, its deliveries and the endpoints' health. No I/O but the SQL of the
storage modules; the worker sends the requests (``workers.webhooks``).

An event of module M in tenant T goes to T's endpoints of M whose ``event_types`` take it (all
when null). Each (event, endpoint) keeps a row (``webhook_deliveries``): once an endpoint
answered 2xx it is never sent that event again, so a retry or a replay sends only to the
endpoints that have not acknowledged it. An attempt's outcome is the event's, through the same
rules as a handler's (``bus.events.rules.save_changes``):

* every request acknowledged (and the handler, if the worker has one, returned): processed;
* a request failed (no 2xx in time; a 3xx is not followed): failed, retried after the webhook
  schedule's delay (:class:`Schedule`; a ``Retry-After`` of a 429 or 503 waits longer); after
  its last retry, failed for good, like a handler's event;
* nothing failed but an endpoint is disabled: the event **waits** for it: failed with
  ``Waiting for a disabled endpoint``, looked at again every
  ``EVENTBUS_WEBHOOK_WAITING_RECHECK_SECONDS``, no attempt counted (``retry_count`` unchanged,
  no history entry); enabling the endpoint sets its waiting events pending at once.

Endpoints: a 410 disables one at once; one whose every request failed since
``failing_since`` for ``EVENTBUS_WEBHOOK_DISABLE_AFTER_SECONDS`` is disabled; a 2xx clears
``failing_since``. An ordered endpoint's events run one at a time per entity (the scheduler's
per-entity order); a failed one holds its key while retries are to come, and after its last
one holds it until an operator releases it (as a handler's ``on_failure="block"``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from bus.delivery.attempts import Attempt, summarize_text
from bus.events.rules import Change, save_changes
from bus.events.schemas import StatusChange
from bus.settings import Settings, parse_schedule
from bus.storage import attempt_store, delivery_store, endpoint_store, event_store
from bus.storage.attempt_store import Outcome
from bus.storage.delivery_store import DeliveryRow
from bus.storage.endpoint_store import EndpointRow
from bus.storage.models import DeliveryStatus, EventStatus
from bus.uow import UnitOfWork

WAITING_MESSAGE = "Waiting for a disabled endpoint"
GONE_REASON = "410 Gone"
MAX_RETRY_AFTER_SECONDS = 86400.0
"""A receiver's ``Retry-After`` is honoured up to a day."""

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class Answer(Protocol):
    """A request's answer as the worker's sender reports it."""

    @property
    def status(self) -> int | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def retry_after(self) -> float | None: ...
    @property
    def acknowledged(self) -> bool: ...
    @property
    def gone(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Schedule:
    """``EVENTBUS_WEBHOOK_RETRY_SCHEDULE``: the delay before each retry (each drawn within
    -10 %, so a burst of failures does not come back at one instant)."""

    delays: tuple[float, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Schedule:
        return cls(parse_schedule(settings.webhook_retry_schedule))

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def delay(
        self, failures: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds until the next attempt after ``failures`` failed ones; None once exhausted.
        A receiver's ``retry_after`` lengthens it (never past a day), never shortens it."""
        if not 1 <= failures <= len(self.delays):
            return None
        base = self.delays[failures - 1]
        wait = base * (rng or random).uniform(0.9, 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return wait


@dataclass(slots=True)
class Plan:
    """One claimed event's deliveries: the endpoints to send it to now (enabled, not yet
    acknowledged), the disabled ones it waits for, and whether any of them asks for order."""

    attempt: Attempt
    send: list[EndpointRow]
    waiting: list[EndpointRow]
    ordered: bool

    @property
    def event_id(self) -> uuid.UUID:
        return self.attempt.event.id


def plan(session: Session, module: str, runs: Sequence[Attempt]) -> dict[uuid.UUID, Plan]:
    """The deliveries of a batch's events (of ``module``): only events some endpoint of their
    tenant takes have one. Two statements: the tenants' endpoints, the acknowledgements."""
    if not runs:
        return {}
    tenants = {attempt.event.tenant_id for attempt in runs}
    endpoints = endpoint_store.for_delivery(session, module, tenants)
    if not endpoints:
        return {}
    by_tenant: dict[uuid.UUID, list[EndpointRow]] = {}
    for endpoint in endpoints:
        by_tenant.setdefault(endpoint.tenant_id, []).append(endpoint)
    takers = {
        attempt.event.id: [
            e
            for e in by_tenant.get(attempt.event.tenant_id, ())
            if e.event_types is None or attempt.event.event_type in e.event_types
        ]
        for attempt in runs
    }
    acked = delivery_store.acknowledged(session, [i for i, found in takers.items() if found])
    plans: dict[uuid.UUID, Plan] = {}
    for attempt in runs:
        event_id = attempt.event.id
        found = [e for e in takers[event_id] if (event_id, e.id) not in acked]
        if not takers[event_id]:
            continue
        plans[event_id] = Plan(
            attempt,
            send=[e for e in found if e.enabled],
            waiting=[e for e in found if not e.enabled],
            ordered=any(e.ordered for e in takers[event_id]),
        )
    return plans


@dataclass(slots=True)
class Verdict:
    """What an attempt's answers decided: the event's change, its delivery rows, and the
    endpoints that answered 2xx, failed, or answered 410."""

    change: Change
    rows: list[DeliveryRow]
    delay: float | None
    error: str | None
    """None when processed; the failure's (or the wait's) one line otherwise."""
    waiting: bool = False
    healthy: set[uuid.UUID] = field(default_factory=set)
    failing: set[uuid.UUID] = field(default_factory=set)
    gone: set[uuid.UUID] = field(default_factory=set)

    @property
    def hold(self) -> bool:
        """A final failure (no retry to come) of an event ordered endpoints take."""
        return self.error is not None and not self.waiting and self.delay is None


def judge(
    item: Plan,
    answers: Mapping[uuid.UUID, Answer],
    schedule: Schedule,
    settings: Settings,
    now: datetime,
    started_at: datetime,
    *,
    handler_error: tuple[str, float | None] | None = None,
) -> Verdict:
    """The outcome of one attempt whose requests got ``answers`` (by endpoint id).
    ``handler_error``: the worker's handler failed too (its message and its own delay)."""
    attempt = item.attempt
    row = attempt.event
    rows: list[DeliveryRow] = []
    healthy: set[uuid.UUID] = set()
    failing: set[uuid.UUID] = set()
    gone: set[uuid.UUID] = set()
    errors: list[str] = []
    retry_after: float | None = None
    for endpoint in item.send:
        answer = answers[endpoint.id]
        ok = answer.acknowledged
        rows.append(
            DeliveryRow(
                row.id,
                endpoint.id,
                row.tenant_id,
                row.created_at,
                DeliveryStatus.ACKNOWLEDGED if ok else DeliveryStatus.FAILED,
                1,
                answer.status,
                None if ok else answer.error,
                now,
                now if ok else None,
            )
        )
        if ok:
            healthy.add(endpoint.id)
            continue
        failing.add(endpoint.id)
        if answer.gone:
            gone.add(endpoint.id)
        if answer.retry_after is not None:
            retry_after = max(retry_after or 0.0, answer.retry_after)
        errors.append(f"endpoint {endpoint.id}: {answer.error or 'failed'}")
    for endpoint in item.waiting:
        rows.append(
            DeliveryRow(
                row.id,
                endpoint.id,
                row.tenant_id,
                row.created_at,
                DeliveryStatus.WAITING,
                0,
                None,
                None,
                None,
            )
        )
    if handler_error is not None:
        errors.insert(0, handler_error[0])
    if errors:
        delays: list[float | None] = []
        if handler_error is not None:
            delays.append(handler_error[1])
        if failing:
            delays.append(schedule.delay(attempt.number, retry_after))
        delay = None if any(d is None for d in delays) else max(d for d in delays if d is not None)
        message = summarize_text("; ".join(errors))
        change = Change(
            row,
            StatusChange(EventStatus.FAILED, error_message=message),
            retry_delay=delay,
            failures_before=attempt.failures_before,
            entry=_entry(attempt, Outcome.FAILED, message, started_at, now),
        )
        return Verdict(change, rows, delay, message, False, healthy, failing, gone)
    if item.waiting:
        recheck = settings.webhook_waiting_recheck_seconds
        change = Change(
            row,
            StatusChange(EventStatus.FAILED, error_message=WAITING_MESSAGE),
            retry_delay=recheck,
            # Waiting is no failure of the event: its count stays what it was.
            failures_before=attempt.failures_before - 1,
        )
        return Verdict(change, rows, recheck, WAITING_MESSAGE, True, healthy, failing, gone)
    change = Change(
        row,
        StatusChange(EventStatus.PROCESSED),
        failures_before=attempt.failures_before,
        entry=_entry(attempt, Outcome.PROCESSED, None, started_at, now),
    )
    return Verdict(change, rows, None, None, False, healthy, failing, gone)


def _entry(
    attempt: Attempt, outcome: Outcome, message: str | None, started_at: datetime, now: datetime
) -> attempt_store.Entry:
    return attempt_store.Entry(
        attempt.event.id,
        outcome,
        now,
        started_at=started_at,
        error_message=message,
        worker=attempt_store.this_process(),
    )


def save(session: Session, verdicts: Sequence[Verdict], settings: Settings, now: datetime) -> None:
    """A batch's delivery rows and its endpoints' health, in the batch's transaction (the
    events' changes go through ``save_changes``, by the caller)."""
    delivery_store.save(session, [r for v in verdicts for r in v.rows])
    healthy: set[uuid.UUID] = set().union(*(v.healthy for v in verdicts))
    failing: set[uuid.UUID] = set().union(*(v.failing for v in verdicts))
    gone: set[uuid.UUID] = set().union(*(v.gone for v in verdicts))
    endpoint_store.mark_healthy(session, healthy)
    failing -= healthy
    endpoint_store.mark_failing(session, failing, now)
    endpoint_store.disable(session, gone, f"{GONE_REASON} at {now.isoformat()}", now)
    cutoff = now - timedelta(seconds=settings.webhook_disable_after_seconds)
    endpoint_store.disable(
        session,
        failing - gone,
        f"every delivery failed for {settings.webhook_disable_after_seconds:g} s",
        now,
        failing_before=cutoff,
    )


def order_types(settings_types: Collection[list[str] | None]) -> tuple[tuple[str, ...], bool]:
    """The event types ordered endpoints take (sorted), and whether one takes them all."""
    every = any(types is None for types in settings_types)
    named = sorted({t for types in settings_types if types is not None for t in types})
    return tuple(named), every


RESUME_LIMIT = 10000
"""Waiting events an enabling sets pending at once; the rest come at their recheck."""


def resume(uow: UnitOfWork, endpoint_id: uuid.UUID) -> int:
    """An endpoint was enabled: the events waiting for it (and for nothing else that failed)
    go pending now, through the status rules (sent again); how many."""
    waiting = delivery_store.waiting_events(uow.session, endpoint_id, RESUME_LIMIT)
    rows = event_store.claim_many(uow.session, waiting) if waiting else []
    changes = [
        Change(row, StatusChange(EventStatus.PENDING))
        for row in rows
        if row.status == EventStatus.FAILED and row.error_message == WAITING_MESSAGE
    ]
    save_changes(uow, changes)
    return len(changes)
