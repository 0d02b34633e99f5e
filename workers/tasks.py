"""``eventbus.process_event``: run one event's handler and record the outcome.

One transaction per attempt. The event's row lock (``SELECT … FOR UPDATE SKIP LOCKED``) is the
claim; the handler runs inside a SAVEPOINT of that transaction, so what it writes through its
``session`` commits together with the processed status, or rolls back with its failure. A
duplicate delivery finds the row locked or processed and is acknowledged without running.

How an attempt that never finishes is still counted (``EVENTBUS_RETRY_MAX_ATTEMPTS`` holds for a
handler that kills its process too). A death rolls the attempt back, its failure included, so
the delivery that follows one counts its own attempt *before* running the handler, in a commit
of its own, and the outcome then replaces that mark. Only such deliveries pay the extra commit:

* a pool child that dies (SIGKILL, out of memory, segfault, the hard time limit) is reported to
  the worker's main process, whose ``task_failure`` receiver sends the event again at once,
  marked with the ``eventbus_lost`` header. Celery's own ``retry_on_worker_lost`` stays off: its
  count is not ours and, with ``max_retries=None``, it would never stop;
* a message the broker redelivers (the whole worker died, or its connection did) carries
  kombu's ``redelivered`` flag and is treated the same way.

A crash loop thus ends failed after ``EVENTBUS_RETRY_MAX_ATTEMPTS`` counted runs plus the first,
uncounted one. Such a delivery waits (up to ``LOCK_WAIT_SECONDS``) for the event's row lock
rather than skipping it, since the dead attempt's rollback may not have reached PostgreSQL yet.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task, signals
from celery.exceptions import Reject, TimeLimitExceeded
from sqlalchemy import event as sa_event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction

from bus import metrics, repository, service
from bus.db import transaction
from bus.dispatch import take_scheduled
from bus.logs import log_context
from bus.models import EventStatus, SystemEvent
from bus.queues import PROCESS_EVENT_TASK
from bus.runtime import Bus
from workers.event import Event
from workers.registry import Registration, Registry, registry

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "eventbus_request_id"
LOST_HEADER = "eventbus_lost"
LOCK_WAIT_SECONDS = 10.0
_IN_HANDLER = "eventbus.in_handler"
_MAX_INFRA_BACKOFF = 60.0


class HandlerMisuse(RuntimeError):
    """A handler committed or rolled back the session it was lent."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended: ``retry_in`` seconds when a retry is due, the handler's error."""

    retry_in: float | None = None
    error: BaseException | None = None


class EventProcessor:
    """Runs attempts for one bus with one registry; the task and the signals delegate here."""

    def __init__(self, bus: Bus, handlers: Registry) -> None:
        self.bus = bus
        self.handlers = handlers

    # --- the task --------------------------------------------------------------------------

    def process(self, task: Task, event_id: str) -> None:
        """One delivery of ``event_id``; raises Celery's ``Retry`` when another try is due."""
        request = task.request
        request_id = getattr(request, REQUEST_ID_HEADER, None)
        try:
            uid = uuid.UUID(event_id)
        except (TypeError, ValueError):
            log.error("event_id=%r is not an event id; message dropped", event_id)
            return
        lost: str | None = getattr(request, LOST_HEADER, None)
        if lost is None and (request.delivery_info or {}).get("redelivered"):
            lost = service.INTERRUPTED_MESSAGE
        try:
            outcome = self._attempt(uid, request_id, lost=lost)
        except SQLAlchemyError as exc:
            # The database, not the event, failed: try again later without spending a retry.
            countdown = _infra_backoff(request.retries or 0)
            log.warning(
                "event_id=%s request_id=%s database error, trying again in %.1fs: %s",
                event_id,
                request_id,
                countdown,
                service.summarize_error(exc),
            )
            raise task.retry(countdown=countdown, exc=exc) from exc
        if outcome.retry_in is not None:
            headers = {k: v for k, v in (request.headers or {}).items() if k != LOST_HEADER}
            try:
                raise task.retry(countdown=outcome.retry_in, exc=outcome.error, headers=headers)
            except Reject:
                # The retry could not be sent: unstamp it so the relay sends it when due.
                self._unstamp(uid)
                raise

    def _attempt(self, event_id: uuid.UUID, request_id: str | None, *, lost: str | None) -> Outcome:
        with self.bus.sessions() as session:
            try:
                return self._attempt_in(session, event_id, request_id, lost=lost)
            except BaseException:
                session.rollback()
                take_scheduled(session)
                raise

    def _attempt_in(
        self, session: Session, event_id: uuid.UUID, request_id: str | None, *, lost: str | None
    ) -> Outcome:
        """One attempt; ``lost`` is why the delivery before this one may have died, if it may."""
        policy = self.bus.retry_policy
        if lost is None:
            attempt = service.begin_attempt(session, event_id)
        else:
            attempt = service.begin_attempt(session, event_id, wait_seconds=LOCK_WAIT_SECONDS)
            self._count_lost_run(session, event_id, attempt)
            if attempt is not None:
                attempt = service.count_in_advance(session, attempt, policy, lost)
                session.commit()
                attempt = service.reclaim_attempt(session, attempt)
        if attempt is None:
            session.rollback()
            log.info(
                "event_id=%s request_id=%s skipped: processed, exhausted or running elsewhere",
                event_id,
                request_id,
            )
            return Outcome()

        row = attempt.event
        where = f"event_id={event_id} request_id={request_id} {row.target_module}/{row.event_type}"
        registration = self.handlers.find(row.target_module, row.event_type)
        if registration is None:
            service.record_unhandled(
                session, attempt, f"No handler for {row.target_module}/{row.event_type}"
            )
            session.commit()
            metrics.observe_failed(row.target_module, row.event_type, None, retried=False)
            log.error("%s failed: no handler registered", where)
            return Outcome()

        started = time.perf_counter()
        error = self._run_handler(session, registration, Event.of(row, attempt.attempt))
        elapsed = time.perf_counter() - started
        elapsed_ms = elapsed * 1000
        if error is None:
            service.record_success(session, attempt)
            session.commit()
            _observe_processed(row, elapsed)
            self.bus.dispatcher.send_scheduled(session)
            log.info("%s processed (attempt %d, %.1f ms)", where, attempt.attempt, elapsed_ms)
            return Outcome()

        if not session.in_transaction() or session.info.pop(_LOST_TRANSACTION, False):
            # The handler ended our transaction: the claim went with it, so take it again.
            session.rollback()
            attempt = service.reclaim_attempt(session, attempt)
            if attempt is None:
                session.rollback()
                return Outcome()
        delay = service.record_failure(session, attempt, error, policy)
        session.commit()
        metrics.observe_failed(
            row.target_module, row.event_type, elapsed, retried=delay is not None
        )
        summary = service.summarize_error(error)
        if delay is None:
            log.error("%s failed for good after attempt %d: %s", where, attempt.attempt, summary)
        else:
            log.warning(
                "%s attempt %d failed, retry in %.2fs: %s", where, attempt.attempt, delay, summary
            )
        return Outcome(retry_in=delay, error=error)

    def _count_lost_run(
        self, session: Session, event_id: uuid.UUID, attempt: service.Attempt | None
    ) -> None:
        """Count the run a lost delivery follows: it died, so it failed; and it is retried now,
        unless the event has nothing left to run (then it failed for good).

        Counted here rather than where the death is reported (the worker's main process) because
        only here is the event's row at hand for the labels; and so ``failed - retried`` still
        counts the events that gave up, crash loops included.
        """
        row: SystemEvent | None = attempt.event if attempt else None
        if row is None:
            row = repository.get_event(session, event_id, None)
            if row is None or row.status != EventStatus.FAILED:
                return  # gone, or processed after all: the run did not fail
        metrics.observe_failed(row.target_module, row.event_type, None, retried=attempt is not None)

    def _run_handler(
        self, session: Session, registration: Registration, event: Event
    ) -> Exception | None:
        """Run the handler in a SAVEPOINT; its exception, with its writes rolled back."""
        if not registration.wants_session:
            # It cannot write through the session: spare the two round trips of a SAVEPOINT.
            try:
                registration(event, session)
            except Exception as exc:
                return exc
            return None
        take_scheduled(session)  # nothing of ours is pending; keep only what the handler sends
        savepoint = session.begin_nested()
        try:
            with _lent_to_handler(session):
                registration(event, session)
            if not savepoint.is_active:
                raise HandlerMisuse("a handler must not commit or roll back its session")
            savepoint.commit()  # flushes: a constraint its writes break fails the handler
        except Exception as exc:
            _undo(session, savepoint)
            return exc
        return None

    def _unstamp(self, event_id: uuid.UUID) -> None:
        try:
            with transaction(self.bus.sessions) as session:
                repository.mark_unsent(session, [event_id])
        except SQLAlchemyError:
            log.exception(
                "event_id=%s could not be unstamped; the relay's lease covers it", event_id
            )

    # --- worker signals --------------------------------------------------------------------

    def on_task_failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        """In the worker's main process: a pool child died running a delivery; send it again,
        marked lost, so the next attempt is counted before it runs (module docstring)."""
        if getattr(sender, "name", None) != PROCESS_EVENT_TASK or sender.app is not self.bus.celery:
            return
        if not isinstance(exception, WorkerLostError | TimeLimitExceeded):
            return  # an ordinary failure: the child recorded it itself
        request = sender.request
        if getattr(request, "id", None) != task_id:
            # A hard time limit is reported twice; only the first report carries the request.
            return
        reason = _why_lost(exception)
        headers = {**(request.headers or {}), LOST_HEADER: reason}
        event_id = (request.args or ["?"])[0]
        try:
            sender.signature_from_request(request, headers=headers).apply_async()
        except Exception:
            log.exception(
                "event_id=%s: could not send it again after its process died; the relay will "
                "after its lease",
                event_id,
            )
            return
        log.warning("event_id=%s attempt lost, sent again: %s", event_id, reason)

    def after_fork(self, **_: Any) -> None:
        """In a new pool child: never reuse the parent's pooled database connections."""
        if "engine" in self.bus.__dict__:
            self.bus.engine.dispose(close=False)


_LOST_TRANSACTION = "eventbus.transaction_lost"


@contextmanager
def _lent_to_handler(session: Session) -> Iterator[None]:
    session.info[_IN_HANDLER] = True
    try:
        yield
    finally:
        session.info.pop(_IN_HANDLER, None)


def _undo(session: Session, savepoint: SessionTransaction) -> None:
    """Roll back what the handler did; flag the transaction lost if the handler ended it."""
    if savepoint.is_active:
        savepoint.rollback()
    else:
        session.info[_LOST_TRANSACTION] = True
    take_scheduled(session)


def _observe_processed(row: SystemEvent, handler_seconds: float) -> None:
    lag = (row.processed_at - row.created_at).total_seconds() if row.processed_at else 0.0
    metrics.observe_processed(row.target_module, row.event_type, handler_seconds, lag)


def _forbid_commit_in_handler(session: Session) -> None:
    # A handler's commit would release the claim and split its writes from the status; only
    # its own savepoints may be committed.
    if session.info.get(_IN_HANDLER) and not session.in_nested_transaction():
        raise HandlerMisuse("a handler must not commit its session: the bus commits it")


def _why_lost(exc: BaseException) -> str:
    if isinstance(exc, TimeLimitExceeded) and exc.args:
        return f"TimeLimitExceeded: the attempt ran past the hard time limit ({exc.args[0]} s)"
    return service.summarize_error(exc)


def _infra_backoff(retries: int) -> float:
    cap = min(_MAX_INFRA_BACKOFF, 2.0 ** min(retries, 6))
    return cap / 2 + random.uniform(0, cap / 2)


def install(bus: Bus, handlers: Registry = registry) -> Task:
    """Register ``eventbus.process_event`` and its signal receivers on the bus's Celery app."""
    processor = EventProcessor(bus, handlers)
    app = bus.celery

    @app.task(
        name=PROCESS_EVENT_TASK,
        bind=True,
        max_retries=None,  # the count lives in PostgreSQL (EVENTBUS_RETRY_MAX_ATTEMPTS)
        acks_late=True,
        retry_on_worker_lost=False,  # counted by on_task_failure instead (module docstring)
        reject_on_worker_lost=False,
        ignore_result=True,
    )
    def process_event(self: Task, event_id: str) -> None:
        """Run the handler of one event; delivery is at least once, so ids may repeat."""
        request_id = getattr(self.request, REQUEST_ID_HEADER, None)
        with log_context(event_id=event_id, request_id=request_id):
            processor.process(self, event_id)

    signals.task_failure.connect(processor.on_task_failure, weak=False)
    signals.worker_process_init.connect(processor.after_fork, weak=False)
    if not sa_event.contains(bus.sessions, "before_commit", _forbid_commit_in_handler):
        sa_event.listen(bus.sessions, "before_commit", _forbid_commit_in_handler)
    task: Task = process_event
    return task
