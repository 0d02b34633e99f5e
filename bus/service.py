"""The status rules: the one place that decides what publishing and each status change mean.

The ``PUT`` route and the worker tasks both come here; neither re-implements a rule.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, object_session

from bus import logs, metrics, repository
from bus.auth import Principal, require_reader, require_writer, resolve_tenant
from bus.dispatch import Dispatch, schedule
from bus.errors import EventNotFound
from bus.models import EventStatus, SystemEvent
from bus.oncommit import on_commit
from bus.schemas import (
    ListQuery,
    StatusChange,
    event_view,
    parse_list_query,
    parse_new_event,
    parse_status_change,
)
from bus.settings import Settings

log = logging.getLogger(__name__)

MAX_FAILURE_SUMMARY = 1000

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with equal jitter: after n failures wait between d/2 and d,
    d = base·2ⁿ⁻¹, clamped to ``max_seconds``.

    Equal jitter spreads a burst of failures over time yet never lets a wait be shorter than the
    one before it (each window starts where the previous one ended); the clamp comes after the
    jitter so this holds past the cap too.
    """

    max_attempts: int
    base_seconds: float
    max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.retry_max_attempts, settings.retry_base_seconds, settings.retry_max_seconds
        )

    def delay(self, failures: int, rng: random.Random | None = None) -> float | None:
        """Seconds until the next attempt after ``failures`` failed ones; None once exhausted."""
        if failures >= self.max_attempts:
            return None
        window = self.base_seconds * 2.0 ** (failures - 1)
        jitter: float = (rng or random).uniform(0, window / 2)
        return min(self.max_seconds, window / 2 + jitter)


@dataclass(frozen=True, slots=True)
class Page:
    events: list[dict[str, Any]]
    page: int
    limit: int
    total: int


def summarize_error(exc: BaseException) -> str:
    """A one-line ``Type: message`` for error_message, truncated."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > MAX_FAILURE_SUMMARY:
        text = text[: MAX_FAILURE_SUMMARY - 1] + "…"
    return text


def publish(
    session: Session,
    settings: Settings,
    principal: Principal,
    tenant_param: str | None,
    body: Any,
    *,
    request_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store a new pending event and schedule its send for after the commit.

    The send is stamped optimistically in the same INSERT (one commit per publish); a failed
    send unstamps it, and a crash in between is covered by the relay's lease.
    """
    require_writer(principal)
    tenant_id = _acting_tenant(principal, tenant_param, creating=True)
    assert tenant_id is not None
    new = parse_new_event(body, settings.max_event_data_bytes)
    now = now or utcnow()
    event = SystemEvent(
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
    repository.insert_event(
        session, {c.key: getattr(event, c.key) for c in SystemEvent.__table__.columns}
    )
    schedule(session, Dispatch(event.id, event.target_module, request_id=request_id))
    on_commit(session, lambda: _published(event))
    return event_view(event)


def _published(event: SystemEvent) -> None:
    metrics.count_published(event.target_module, event.event_type)
    log.info(
        "event published for %s/%s",
        event.target_module,
        event.event_type,
        extra={"event_id": event.id, "tenant_id": event.tenant_id, "request_id": event.request_id},
    )


def _acting_tenant(
    principal: Principal, requested: str | None, *, creating: bool
) -> uuid.UUID | None:
    """:func:`bus.auth.resolve_tenant`, and the tenant named in the logs of the call from here."""
    tenant_id = resolve_tenant(principal, requested, creating=creating)
    logs.bind(tenant_id=tenant_id)
    return tenant_id


def list_events(session: Session, principal: Principal, params: Mapping[str, str]) -> Page:
    """One page of the caller's events (every tenant's for a system admin naming none)."""
    require_reader(principal)
    tenant_id = _acting_tenant(principal, params.get("tenant_id"), creating=False)
    query: ListQuery = parse_list_query(params)
    rows, total = repository.list_page(session, tenant_id, query)
    return Page([event_view(r) for r in rows], query.page, query.limit, total)


@dataclass(frozen=True, slots=True)
class Stats:
    """What an operator checks first: each module's events by status, and how long the oldest
    pending one has waited."""

    tenant_id: uuid.UUID | None
    generated_at: datetime
    modules: list[dict[str, Any]]
    totals: dict[str, int]
    oldest_pending_age_seconds: float | None


_COUNTS = ("pending", "processed", "failed", "retry_scheduled")


def event_stats(
    session: Session, principal: Principal, params: Mapping[str, str], now: datetime | None = None
) -> Stats:
    """``GET /system/events/stats``: counts by target module and status, with the same reader
    rule and tenancy as the list (a system admin naming no tenant sees every tenant's).

    ``failed`` counts every failed event; ``retry_scheduled`` those of them with a retry to
    come, so failed - retry_scheduled have given up and need a person.
    """
    require_reader(principal)
    tenant_id = _acting_tenant(principal, params.get("tenant_id"), creating=False)
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
    return Stats(tenant_id, now, modules, totals, max(known) if known else None)


def _age(since: datetime | None, now: datetime) -> float | None:
    if since is None:
        return None
    return round(max(0.0, (now - since).total_seconds()), 3)


def update_status(
    session: Session,
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
    """
    require_writer(principal)
    tenant_id = _acting_tenant(principal, tenant_param, creating=False)
    try:
        uid = uuid.UUID(event_id)
    except ValueError as exc:
        raise EventNotFound() from exc
    change = parse_status_change(body)
    event = repository.get_event(session, uid, tenant_id, lock=True)
    if event is None:
        raise EventNotFound()
    apply_change(event, change, now or utcnow(), retry_delay=None)
    session.flush()
    return event_view(event)


def apply_change(
    event: SystemEvent, change: StatusChange, now: datetime, *, retry_delay: float | None
) -> None:
    """The rules of a status change, for the API and the workers alike.

    processed: processed_at defaults to now, no retry left pending. failed: retry_count + 1, the
    error kept, the next attempt at ``now + retry_delay`` (none when None). pending: sent again.
    """
    event.status = change.status
    if change.status is EventStatus.PROCESSED:
        event.processed_at = change.processed_at or now
        event.error_message = change.error_message
        event.next_attempt_at = None
    elif change.status is EventStatus.FAILED:
        event.retry_count += 1
        event.error_message = change.error_message
        event.processed_at = None
        event.next_attempt_at = (
            now + timedelta(seconds=retry_delay) if retry_delay is not None else None
        )
        if retry_delay is not None:
            event.dispatched_at = now
    else:
        event.processed_at = None
        event.next_attempt_at = None
        event.dispatched_at = now
        session = _session_of(event)
        schedule(session, Dispatch(event.id, event.target_module, request_id=event.request_id))


def _session_of(event: SystemEvent) -> Session:
    session = object_session(event)
    if session is None:
        raise RuntimeError("event is not attached to a session")
    return session


# --- worker attempts -----------------------------------------------------------------------

INTERRUPTED_MESSAGE = "AttemptInterrupted: the worker stopped before this attempt finished"


@dataclass(frozen=True, slots=True)
class Attempt:
    """A claimed event, ready for its handler; the claim lasts until the transaction ends.

    ``attempt`` is this run's number from 1; ``counted`` says it was already recorded as failed
    before the handler ran (see :func:`count_in_advance`).
    """

    event: SystemEvent
    attempt: int
    counted: bool = False


def begin_attempt(
    session: Session, event_id: uuid.UUID, *, wait_seconds: float | None = None
) -> Attempt | None:
    """Claim an event for one handler run, or None if it must not run now.

    None when another delivery holds it, it is already processed, it is gone, or its retries are
    exhausted: the message is then acknowledged without running the handler again. With
    ``wait_seconds`` a lock held elsewhere is waited for (see ``claim_for_processing``).
    """
    event = repository.claim_for_processing(session, event_id, wait_seconds=wait_seconds)
    if event is None or event.status == EventStatus.PROCESSED:
        return None
    if event.status == EventStatus.FAILED and event.next_attempt_at is None:
        return None
    return Attempt(event, event.retry_count + 1)


def count_in_advance(
    session: Session,
    attempt: Attempt,
    policy: RetryPolicy,
    reason: str = INTERRUPTED_MESSAGE,
    now: datetime | None = None,
) -> Attempt:
    """Record the attempt as failed before its handler runs; the caller commits, then reclaims.

    For a delivery that follows one whose process died (a redelivered message, or the resend
    after a lost pool process): the death rolled that attempt back, its failure included, so
    without a mark made beforehand a handler that kills its process would run forever. The
    outcome recorded after the handler replaces the mark, so an attempt that finishes is counted
    once; one that dies again stays counted, and a crash loop ends after ``policy.max_attempts``
    counted attempts (plus the first, uncounted one).
    """
    event = attempt.event
    event.retry_count = attempt.attempt - 1
    apply_change(
        event,
        StatusChange(EventStatus.FAILED, error_message=reason),
        now or utcnow(),
        retry_delay=policy.delay(attempt.attempt),
    )
    repository.save_outcome(session, event)
    return Attempt(event, attempt.attempt, counted=True)


def reclaim_attempt(session: Session, attempt: Attempt) -> Attempt | None:
    """Claim an attempt's event again after its transaction ended (a mark counted in advance
    was committed, or a handler ended the transaction); None if another delivery moved it."""
    event = repository.claim_for_processing(session, attempt.event.id)
    expected = attempt.attempt if attempt.counted else attempt.attempt - 1
    if event is None or event.status == EventStatus.PROCESSED or event.retry_count != expected:
        return None
    return Attempt(event, attempt.attempt, attempt.counted)


def record_success(session: Session, attempt: Attempt, now: datetime | None = None) -> None:
    """The handler returned: the event is processed (a mark counted in advance is undone)."""
    attempt.event.retry_count = attempt.attempt - 1
    apply_change(
        attempt.event, StatusChange(EventStatus.PROCESSED), now or utcnow(), retry_delay=None
    )
    repository.save_outcome(session, attempt.event)


def record_failure(
    session: Session,
    attempt: Attempt,
    exc: BaseException,
    policy: RetryPolicy,
    now: datetime | None = None,
) -> float | None:
    """The handler raised: failed, retry_count = this attempt's number; returns the delay to
    the next try, or None once the attempts are exhausted."""
    delay = policy.delay(attempt.attempt)
    _record_failed(session, attempt, summarize_error(exc), now, delay)
    return delay


def record_unhandled(
    session: Session, attempt: Attempt, reason: str, now: datetime | None = None
) -> None:
    """The event cannot run here (no handler): failed at once, with no automatic retry.

    Retrying would fail the same way until a handler is deployed; a ``PUT`` to ``pending``
    replays it then.
    """
    _record_failed(session, attempt, reason, now, None)


def _record_failed(
    session: Session, attempt: Attempt, message: str, now: datetime | None, delay: float | None
) -> None:
    attempt.event.retry_count = attempt.attempt - 1
    apply_change(
        attempt.event,
        StatusChange(EventStatus.FAILED, error_message=message),
        now or utcnow(),
        retry_delay=delay,
    )
    repository.save_outcome(session, attempt.event)
