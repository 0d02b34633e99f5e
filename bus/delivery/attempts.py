"""The worker's attempt protocol: claim an event, count a run that may die, record its outcome.

An attempt is one handler run inside the worker's unit of work. The event's row lock
(``FOR UPDATE SKIP LOCKED``) is the claim; it lasts until the unit of work ends. Outcomes are
saved through :func:`bus.events.rules.save_changes`, the same write path the ``PUT`` route uses;
``retry_count`` is derived there from the failures before this attempt
(:attr:`Attempt.failures_before`).

A run that dies (pool child killed, worker SIGKILLed) rolls back its own failure, so a delivery
that may follow such a death counts its attempt in advance (:func:`count_in_advance`), commits,
and claims again (:func:`reclaim`); the outcome then replaces the mark.

Each outcome carries its attempt history entry (:mod:`bus.storage.attempt_store`), saved with it:
``processed``
or ``failed`` for a handler run, and ``lost`` for the dead run a count in advance follows.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from bus.delivery.retry import RetryPolicy
from bus.events.rules import Change, save_changes, utcnow
from bus.events.schemas import StatusChange
from bus.storage import attempt_store, event_store
from bus.storage.attempt_store import Outcome
from bus.storage.models import EventRow, EventStatus
from bus.uow import UnitOfWork

MAX_FAILURE_SUMMARY = 1000
INTERRUPTED_MESSAGE = "AttemptInterrupted: the worker stopped before this attempt finished"


class Skip(StrEnum):
    """Why a delivery runs no handler; its message is acknowledged."""

    NOT_FOUND = "no such event"
    PROCESSED = "processed"
    EXHAUSTED = "retries exhausted"
    BUSY = "claimed by another delivery"


@dataclass(frozen=True, slots=True)
class Attempt:
    """A claimed event, ready for its handler.

    ``number`` counts runs from 1; ``counted`` says the run was already recorded as failed
    before its handler ran (:func:`count_in_advance`).
    """

    event: EventRow
    number: int
    counted: bool = False

    @property
    def failures_before(self) -> int:
        return self.number - 1


def summarize_error(exc: BaseException) -> str:
    """A one-line ``Type: message`` for error_message, truncated."""
    return summarize_text(f"{type(exc).__name__}: {exc}")


def summarize_text(text: str) -> str:
    """``text`` on one line, truncated for error_message."""
    text = " ".join(text.split())
    if len(text) > MAX_FAILURE_SUMMARY:
        text = text[: MAX_FAILURE_SUMMARY - 1] + "…"
    return text


def begin(
    uow: UnitOfWork, event_id: uuid.UUID, *, wait_seconds: float | None = None
) -> Attempt | Skip:
    """Claim one event for a handler run, or say why it must not run now.

    With ``wait_seconds`` a lock held elsewhere is waited for (see
    ``event_store.claim_for_processing``) instead of skipped: for a delivery that may follow a
    dead one, whose rollback may still be on its way.
    """
    event = event_store.claim_for_processing(uow.session, event_id, wait_seconds=wait_seconds)
    if event is None:
        # Only on this rare path: tell a row locked elsewhere from one that does not exist.
        exists = event_store.read_event(uow.session, event_id) is not None
        return Skip.BUSY if exists else Skip.NOT_FOUND
    return _runnable(event)


def begin_many(
    uow: UnitOfWork, event_ids: Sequence[uuid.UUID]
) -> tuple[list[Attempt], dict[uuid.UUID, Skip]]:
    """Claim a batch in one statement: the attempts to run, in the batch's order, and why the
    others must not run now."""
    wanted = list(dict.fromkeys(event_ids))  # a repeated id runs once
    rows = {row.id: row for row in event_store.claim_many(uow.session, wanted)}
    missing = [event_id for event_id in wanted if event_id not in rows]
    exist = event_store.existing(uow.session, missing) if missing else set()
    runs: list[Attempt] = []
    skips: dict[uuid.UUID, Skip] = {}
    for event_id in wanted:
        row = rows.get(event_id)
        claimed = _runnable(row) if row else Skip.BUSY if event_id in exist else Skip.NOT_FOUND
        if isinstance(claimed, Skip):
            skips[event_id] = claimed
        else:
            runs.append(claimed)
    return runs, skips


def _runnable(event: EventRow) -> Attempt | Skip:
    if event.status == EventStatus.PROCESSED:
        return Skip.PROCESSED
    if event.status == EventStatus.FAILED and event.next_attempt_at is None:
        return Skip.EXHAUSTED
    return Attempt(event, event.retry_count + 1)


def count_in_advance(
    uow: UnitOfWork, attempt: Attempt, policy: RetryPolicy, reason: str = INTERRUPTED_MESSAGE
) -> Attempt:
    """Record the attempt as failed before its handler runs; the caller commits, then claims
    it again (:func:`reclaim`).

    The outcome recorded after the handler replaces the mark, so an attempt that finishes is
    counted once; one that dies again stays counted, and a crash loop ends after
    ``policy.max_attempts`` counted attempts (plus the first, uncounted one).

    The run this delivery follows died: it is appended to the history as ``lost`` with
    ``reason``, in the same commit as the mark.
    """
    lost = attempt_store.Entry(attempt.event.id, Outcome.LOST, utcnow(), error_message=reason)
    mark = dataclasses.replace(failed(attempt, reason, policy.delay(attempt.number)), entry=lost)
    save_changes(uow, [mark])
    return Attempt(attempt.event, attempt.number, counted=True)


def reclaim(uow: UnitOfWork, attempt: Attempt) -> Attempt | None:
    """Claim an attempt's event again after its transaction ended (a mark counted in advance
    was committed, or a handler ended the transaction); None if another delivery moved it."""
    event = event_store.claim_for_processing(uow.session, attempt.event.id)
    expected = attempt.number if attempt.counted else attempt.failures_before
    if event is None or event.status == EventStatus.PROCESSED or event.retry_count != expected:
        return None
    return Attempt(event, attempt.number, attempt.counted)


# The outcomes of attempts, saved together with ``bus.events.rules.save_changes`` (one statement
# for a
# whole batch); retry_count comes from the failures before the attempt, never from the row, so
# a mark counted in advance is replaced, not added to.


def processed(attempt: Attempt, started_at: datetime | None = None) -> Change:
    """The handler returned: the event is processed (a mark counted in advance is undone).
    ``started_at``: when the handler began, for the history."""
    return Change(
        attempt.event,
        StatusChange(EventStatus.PROCESSED),
        failures_before=attempt.failures_before,
        entry=_entry(attempt, Outcome.PROCESSED, None, started_at),
    )


def failed(
    attempt: Attempt, message: str, delay: float | None, started_at: datetime | None = None
) -> Change:
    """The attempt failed: retry_count = its number; the next try in ``delay`` seconds, or
    none (exhausted, or no handler: retrying would fail the same way until one is deployed, and
    a ``PUT`` to ``pending`` replays it then)."""
    return Change(
        attempt.event,
        StatusChange(EventStatus.FAILED, error_message=message),
        retry_delay=delay,
        failures_before=attempt.failures_before,
        entry=_entry(attempt, Outcome.FAILED, message, started_at),
    )


def _entry(
    attempt: Attempt, outcome: Outcome, message: str | None, started_at: datetime | None
) -> attempt_store.Entry:
    finished_at = utcnow()
    return attempt_store.Entry(
        attempt.event.id,
        outcome,
        finished_at,
        started_at=started_at or finished_at,
        error_message=message,
        worker=attempt_store.this_process(),
    )
