"""The status rules: what each status change does to an event, for ``PUT`` and workers alike.

:func:`apply_change` is the rule table; :func:`save_changes` applies it and writes the outcome
columns in one statement, sending an event again when the rule says so. Both the API's
``update_status`` and the worker's attempts (``bus.delivery.attempts``) save through it, so a
column the
rules start setting is written on every path.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bus.broker.dispatch import Dispatch
from bus.events.schemas import StatusChange
from bus.storage import attempt_store, event_store
from bus.storage.models import EventRow, EventStatus
from bus.uow import UnitOfWork

OUTCOME_COLUMNS = (
    "status",
    "retry_count",
    "processed_at",
    "error_message",
    "next_attempt_at",
    "dispatched_at",
)
"""Every column :func:`apply_change` may set, and so every column :func:`save_changes` writes."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def apply_change(
    event: EventRow,
    change: StatusChange,
    now: datetime,
    *,
    retry_delay: float | None = None,
    failures_before: int | None = None,
) -> bool:
    """Apply the rules of a status change to ``event``; True when it must be sent again.

    ``retry_count`` is ``failures_before`` (the row's own count unless given: a worker passes
    the failures before its attempt, so an attempt counted in advance is counted once) plus one
    for a failure.

    * processed: processed_at as given or now, error as given, no retry left to come;
    * failed: the error kept, the next attempt at ``now + retry_delay`` (none when None, as
      for a ``PUT``), stamped as sent when a retry is due (its message goes with it);
    * pending: sent again now (a manual retry or replay).
    """
    failures = event.retry_count if failures_before is None else failures_before
    event.status = change.status
    event.retry_count = failures + (1 if change.status is EventStatus.FAILED else 0)
    if change.status is EventStatus.PROCESSED:
        event.processed_at = change.processed_at or now
        event.error_message = change.error_message
        event.next_attempt_at = None
        return False
    if change.status is EventStatus.FAILED:
        event.error_message = change.error_message
        event.processed_at = None
        event.next_attempt_at = None
        if retry_delay is not None:
            event.next_attempt_at = now + timedelta(seconds=retry_delay)
            event.dispatched_at = now
        return False
    event.processed_at = None
    event.next_attempt_at = None
    event.dispatched_at = now
    return True


@dataclass(frozen=True, slots=True)
class Change:
    """One status change to save: the event, the change, how the rules apply it (see
    :func:`apply_change`), and the attempt history entry it appends, if any."""

    event: EventRow
    change: StatusChange
    retry_delay: float | None = None
    failures_before: int | None = None
    entry: attempt_store.Entry | None = None


def save_changes(uow: UnitOfWork, changes: Sequence[Change], now: datetime | None = None) -> None:
    """:func:`apply_change` to each, then every outcome written in one statement, their history
    entries appended in one more (``bus.storage.attempt_store.record``), and the sends the rules
    ask for
    handed to the unit of work: the one write path of a status change, for the ``PUT`` route
    and the workers' attempts alike."""
    now = now or utcnow()
    outcomes: list[tuple[uuid.UUID, dict[str, Any]]] = []
    for item in changes:
        event = item.event
        resend = apply_change(
            event,
            item.change,
            now,
            retry_delay=item.retry_delay,
            failures_before=item.failures_before,
        )
        outcomes.append((event.id, {name: getattr(event, name) for name in OUTCOME_COLUMNS}))
        if resend:
            uow.send(Dispatch(event.id, event.target_module, request_id=event.request_id))
    event_store.save_outcomes(uow.session, outcomes)
    attempt_store.record(uow.session, [item.entry for item in changes if item.entry is not None])


def save_change(
    uow: UnitOfWork,
    event: EventRow,
    change: StatusChange,
    now: datetime | None = None,
    *,
    entry: attempt_store.Entry | None = None,
) -> None:
    """One change reported from outside the bus (``PUT``), with the row's own failure count."""
    save_changes(uow, [Change(event, change, entry=entry)], now)
