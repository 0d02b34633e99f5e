"""``eventbus.process_event``: run one event's handler and record the outcome.

One transaction per attempt. The event's row lock (``SELECT … FOR UPDATE SKIP LOCKED``) is the
claim; the handler runs inside a SAVEPOINT of that transaction, so what it writes through its
``session`` commits together with the processed status, or rolls back with its failure. A
duplicate delivery finds the row locked or processed and is acknowledged without running.

How an attempt that never finishes is still counted (``EVENTBUS_RETRY_MAX_ATTEMPTS`` holds for a
handler that kills its process too):

* a pool child that dies (SIGKILL, out of memory, segfault, hard time limit) is reported to the
  worker's main process as ``WorkerLostError``/``TimeLimitExceeded``; the ``task_failure`` signal
  there records the failed attempt in PostgreSQL and sends the retry itself. Celery's own
  ``retry_on_worker_lost`` is off for this task: it would retry without our count and with
  ``max_retries=None`` never stop;
* a message that comes back redelivered (the whole worker died, or its broker connection did)
  may repeat an attempt nobody recorded: it first commits the attempt as failed, then runs it;
  the outcome replaces that mark. Only redeliveries pay this extra commit.
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

from bus import repository, service
from bus.db import transaction
from bus.dispatch import Dispatch, take_scheduled
from bus.queues import PROCESS_EVENT_TASK
from bus.runtime import Bus
from workers.event import Event
from workers.registry import Registration, Registry, registry

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "eventbus_request_id"
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
        redelivered = bool((request.delivery_info or {}).get("redelivered"))
        try:
            outcome = self._attempt(uid, request_id, redelivered=redelivered)
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
            try:
                raise task.retry(countdown=outcome.retry_in, exc=outcome.error)
            except Reject:
                # The retry could not be sent: unstamp it so the relay sends it when due.
                self._unstamp(uid)
                raise

    def _attempt(
        self, event_id: uuid.UUID, request_id: str | None, *, redelivered: bool
    ) -> Outcome:
        with self.bus.sessions() as session:
            try:
                return self._attempt_in(session, event_id, request_id, redelivered=redelivered)
            except BaseException:
                session.rollback()
                take_scheduled(session)
                raise

    def _attempt_in(
        self, session: Session, event_id: uuid.UUID, request_id: str | None, *, redelivered: bool
    ) -> Outcome:
        policy = self.bus.retry_policy
        attempt = service.begin_attempt(session, event_id)
        if attempt is not None and redelivered:
            attempt = service.count_in_advance(attempt, policy)
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
                attempt, f"No handler for {row.target_module}/{row.event_type}"
            )
            session.commit()
            log.error("%s failed: no handler registered", where)
            return Outcome()

        started = time.perf_counter()
        error = self._run_handler(session, registration, Event.of(row, attempt.attempt))
        elapsed_ms = (time.perf_counter() - started) * 1000
        if error is None:
            service.record_success(attempt)
            session.commit()
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
        delay = service.record_failure(attempt, error, policy)
        session.commit()
        summary = service.summarize_error(error)
        if delay is None:
            log.error("%s failed for good after attempt %d: %s", where, attempt.attempt, summary)
        else:
            log.warning(
                "%s attempt %d failed, retry in %.2fs: %s", where, attempt.attempt, delay, summary
            )
        return Outcome(retry_in=delay, error=error)

    def _run_handler(
        self, session: Session, registration: Registration, event: Event
    ) -> Exception | None:
        """Run the handler in a SAVEPOINT; its exception, with its writes rolled back."""
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
            log.exception("event_id=%s could not be unstamped; the relay's lease covers it")

    # --- worker signals --------------------------------------------------------------------

    def on_task_failure(
        self, sender: Any = None, exception: BaseException | None = None, **kwargs: Any
    ) -> None:
        """In the worker's main process: a pool child died running an attempt; count it."""
        if getattr(sender, "name", None) != PROCESS_EVENT_TASK or sender.app is not self.bus.celery:
            return
        if not isinstance(exception, WorkerLostError | TimeLimitExceeded):
            return  # the child recorded an ordinary failure itself
        args = kwargs.get("args") or []
        try:
            event_id = uuid.UUID(str(args[0]))
        except (IndexError, ValueError):
            return
        try:
            with transaction(self.bus.sessions) as session:
                result = service.record_lost_attempt(
                    session, event_id, exception, self.bus.retry_policy
                )
                if result is None:
                    return
                attempt, delay = result
                retry = Dispatch(
                    event_id,
                    attempt.event.target_module,
                    countdown=delay,
                    request_id=attempt.event.request_id,
                )
        except SQLAlchemyError:
            log.exception(
                "event_id=%s: could not record the lost attempt; the relay sends it again "
                "after its lease",
                event_id,
            )
            return
        summary = service.summarize_error(exception)
        if delay is None:
            log.error("event_id=%s failed for good: %s", event_id, summary)
            return
        log.warning("event_id=%s attempt lost, retry in %.2fs: %s", event_id, delay, summary)
        self.bus.dispatcher.send([retry])

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


def _forbid_commit_in_handler(session: Session) -> None:
    # A handler's commit would release the claim and split its writes from the status; only
    # its own savepoints may be committed.
    if session.info.get(_IN_HANDLER) and not session.in_nested_transaction():
        raise HandlerMisuse("a handler must not commit its session: the bus commits it")


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
        processor.process(self, event_id)

    signals.task_failure.connect(processor.on_task_failure, weak=False)
    signals.worker_process_init.connect(processor.after_fork, weak=False)
    if not sa_event.contains(bus.sessions, "before_commit", _forbid_commit_in_handler):
        sa_event.listen(bus.sessions, "before_commit", _forbid_commit_in_handler)
    task: Task = process_event
    return task
