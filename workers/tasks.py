"""``eventbus.process_events``: run the handlers of a batch of events and record the outcomes.

A message carries the ids a publish (or the relay) committed together for one module. One
delivery is one unit of work: every event's row lock (``SELECT … FOR UPDATE SKIP LOCKED``, one
statement) is its claim; each handler runs inside a SAVEPOINT of that transaction, so what it
writes through its ``session`` commits together with its processed status, or rolls back with
its failure alone; every outcome is written in one statement and the batch commits once. A
failed event's retry then travels alone, with its delay. A duplicate delivery finds the rows
locked or processed and is acknowledged without running them. ``eventbus.process_event`` (one
id, what the bus sent before batches) takes the same path.

How an attempt that never finishes is still counted (``EVENTBUS_RETRY_MAX_ATTEMPTS`` holds for a
handler that kills its process too). A death rolls the attempt back, its failure included, so
the delivery that follows one counts its own attempt *before* running the handler, in a commit
of its own, and the outcome then replaces that mark. Only such deliveries pay the extra commit:

* a pool child that dies (SIGKILL, out of memory, segfault, the hard time limit) is reported to
  the worker's main process, whose ``task_failure`` receiver sends the message again at once,
  marked with the ``eventbus_lost`` header. Celery's own ``retry_on_worker_lost`` stays off: its
  count is not ours and, with ``max_retries=None``, it would never stop;
* a message the broker redelivers (the whole worker died, or its connection did) carries
  kombu's ``redelivered`` flag and is treated the same way.

Such a delivery of a batch is split first: each event is sent again alone, marked, so an event
that kills its process is counted and the others of its batch run without it. A crash loop thus
ends failed after ``EVENTBUS_RETRY_MAX_ATTEMPTS`` counted runs plus the first,
uncounted one. Such a delivery waits (up to ``LOCK_WAIT_SECONDS``) for the event's row lock
rather than skipping it, since the dead attempt's rollback may not have reached PostgreSQL yet.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task, signals
from celery.exceptions import TimeLimitExceeded
from sqlalchemy.exc import SQLAlchemyError

from bus.broker.celery_app import INFRA_RETRY_MAX_SECONDS
from bus.broker.dispatch import INTERRUPTED_HEADER, REQUEST_ID_HEADER, Dispatch
from bus.broker.queues import BUS_TASKS, PROCESS_EVENT_TASK, PROCESS_EVENTS_TASK, queue_name
from bus.delivery import attempts
from bus.delivery.attempts import Attempt, Skip
from bus.events.rules import Change, save_changes, utcnow
from bus.observability import metrics
from bus.observability.logs import log_context
from bus.observability.tracing import Delivery, Receiver
from bus.runtime import Runtime
from bus.storage import event_store
from bus.storage.models import EventRow, EventStatus
from bus.uow import HandlerMisuse, UnitOfWork
from workers.event import Event
from workers.registry import Registration, Registry, registry

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 10.0
BATCH_BUDGET_SECONDS = 5.0
"""A batch that has run this long (or a tenth of the task time limit, if less) sends the rest
of its events on in a message of their own."""

__all__ = ["EventProcessor", "HandlerMisuse", "install"]


@dataclass(frozen=True, slots=True)
class HandlerRun:
    """A handler's run: its exception (its writes rolled back), and whether it ended the
    attempt's transaction itself, taking the claim with it."""

    error: Exception | None = None
    aborted_transaction: bool = False


class EventProcessor:
    """Runs deliveries for one bus with one registry; the tasks and the signals delegate here."""

    def __init__(self, runtime: Runtime, handlers: Registry) -> None:
        self.runtime = runtime
        self.handlers = handlers
        limit = runtime.settings.task_time_limit_seconds
        self._budget = min(BATCH_BUDGET_SECONDS, limit / 10)
        self._prefix = runtime.settings.queue_prefix
        self._tracing = (
            Receiver(runtime.settings.broker_url) if runtime.settings.otel_enabled else None
        )

    # --- the tasks -------------------------------------------------------------------------

    def process(self, task: Task, event_ids: Sequence[str]) -> None:
        """One delivery: a batch of ids (or the single id of a message sent before batches).

        A delivery that may follow a dead one is run one event at a time: a batch is split
        into messages of one event each (:meth:`_split`), so an event that kills its process
        takes down no other; a single one has its attempt counted in advance.
        """
        request = task.request
        request_id = getattr(request, REQUEST_ID_HEADER, None)
        uids = _event_ids(event_ids)
        if not uids:
            return
        interrupted: str | None = getattr(request, INTERRUPTED_HEADER, None)
        if interrupted is None and (request.delivery_info or {}).get("redelivered"):
            interrupted = attempts.INTERRUPTED_MESSAGE
        # Tracing off: this one check per delivery, and ``trace`` stays None.
        trace = None
        if self._tracing is not None:
            trace = self._tracing.delivery(lambda name: getattr(request, name, None), request.id)
        try:
            with self.runtime.unit_of_work() as uow:
                if interrupted is None:
                    runs, skips = attempts.begin_many(uow, uids)
                    self._log_skips(skips, request_id)
                    self._run(uow, runs, trace)
                elif len(uids) > 1:
                    self._split(uow, uids, interrupted, trace)
                else:
                    claimed = self._claim_interrupted(uow, uids[0], interrupted)
                    if isinstance(claimed, Skip):
                        self._log_skips({uids[0]: claimed}, request_id)
                    else:
                        self._run(uow, [claimed], trace)
        except SQLAlchemyError as exc:
            # The database, not the events, failed: try again later without spending a retry.
            countdown = _infra_backoff(request.retries or 0)
            log.warning(
                "%d events request_id=%s database error, trying again in %.1fs: %s",
                len(uids),
                request_id,
                countdown,
                attempts.summarize_error(exc),
            )
            raise task.retry(countdown=countdown, exc=exc) from exc

    def _run(self, uow: UnitOfWork, runs: Sequence[Attempt], trace: Delivery | None = None) -> None:
        """Each claimed event's handler in its own savepoint, every outcome in one statement
        and their attempt history entries in one more, one commit; then each failure's retry
        is sent on its own with its delay.

        Past the batch's time budget the events not yet run are sent again in a message of
        their own, so a batch never runs into the task's time limit. With ``trace`` (tracing
        on) each handler runs in its event's span, and the sends carry the events' traces on.
        """
        policy = self.runtime.retry_policy
        changes: list[Change] = []
        reports: list[Callable[[], None]] = []
        ends = time.monotonic() + self._budget
        # Chosen once per batch, so tracing off costs the loop nothing.
        invoke = self._run_handler if trace is None else functools.partial(self._traced, trace)
        for index, attempt in enumerate(runs):
            if index and time.monotonic() > ends:
                for rest in runs[index:]:
                    uow.send(_carried(rest.event, trace))
                log.info("batch past %.1fs: %d events sent on", self._budget, len(runs) - index)
                break
            row = attempt.event
            registration = self.handlers.find(row.target_module, row.event_type)
            if registration is None:
                reason = f"No handler for {row.target_module}/{row.event_type}"
                changes.append(attempts.failed(attempt, reason, None))
                reports.append(functools.partial(_report_unhandled, attempt))
                if trace is not None:
                    self._trace_unhandled(trace, Event.of(row, attempt.number), reason)
                continue
            began, started = utcnow(), time.perf_counter()
            with _logged_as(row):
                run = invoke(uow, registration, Event.of(row, attempt.number))
            elapsed = time.perf_counter() - started
            if run.error is None:
                changes.append(attempts.processed(attempt, began))
                reports.append(functools.partial(_report_processed, attempt, elapsed))
                continue
            if run.aborted_transaction:
                self._after_aborted_transaction(uow, runs, attempt, run.error, trace)
                return
            delay = policy.delay(attempt.number)
            message = attempts.summarize_error(run.error)
            changes.append(attempts.failed(attempt, message, delay, began))
            if delay is not None:
                uow.send(_retry(row, delay, trace.last if trace is not None else None))
            reports.append(functools.partial(_report_failed, attempt, run.error, elapsed, delay))
        save_changes(uow, changes)
        uow.commit()
        for report in reports:
            report()

    def _after_aborted_transaction(
        self,
        uow: UnitOfWork,
        runs: Sequence[Attempt],
        culprit: Attempt,
        error: Exception,
        trace: Delivery | None,
    ) -> None:
        """A handler ended the transaction: every claim and outcome of the batch went with it.
        Its own event is claimed again and failed; the others are sent again to run anew."""
        policy = self.runtime.retry_policy
        again = attempts.reclaim(uow, culprit)
        if again is not None:
            delay = policy.delay(again.number)
            save_changes(uow, [attempts.failed(again, attempts.summarize_error(error), delay)])
            if delay is not None:
                uow.send(_retry(again.event, delay, trace.last if trace is not None else None))
        for other in runs:
            if other is not culprit:
                uow.send(_carried(other.event, trace))
        uow.commit()
        if again is not None:
            _report_failed(again, error, None, delay)

    def _split(
        self,
        uow: UnitOfWork,
        event_ids: Sequence[uuid.UUID],
        interrupted: str,
        trace: Delivery | None,
    ) -> None:
        """Send each event of a batch that may follow a death again, alone and marked lost."""
        modules = event_store.unprocessed_targets(uow.session, event_ids)  # done ones stay done
        for event_id, module in modules.items():
            origin = trace.origin(event_id) if trace is not None else None
            uow.send(Dispatch(event_id, module, interrupted=interrupted, trace=origin))
        uow.commit()
        log.warning(
            "batch of %d events may follow a lost run, sent again one by one: %s",
            len(modules),
            interrupted,
        )

    def _claim_interrupted(
        self, uow: UnitOfWork, event_id: uuid.UUID, interrupted: str
    ) -> Attempt | Skip:
        """The claim of a delivery that may follow a dead one: its attempt counted in advance
        and committed first (module docstring), then claimed again."""
        claimed = attempts.begin(uow, event_id, wait_seconds=LOCK_WAIT_SECONDS)
        self._count_interrupted_run(uow, event_id, claimed)
        if isinstance(claimed, Skip):
            return claimed
        counted = attempts.count_in_advance(uow, claimed, self.runtime.retry_policy, interrupted)
        uow.commit()
        return attempts.reclaim(uow, counted) or Skip.BUSY

    @staticmethod
    def _log_skips(skips: Mapping[uuid.UUID, Skip], request_id: str | None) -> None:
        for event_id, why in skips.items():
            log.info("event_id=%s request_id=%s skipped: %s", event_id, request_id, why)

    def _count_interrupted_run(
        self, uow: UnitOfWork, event_id: uuid.UUID, claimed: Attempt | Skip
    ) -> None:
        """Count the run a lost delivery follows: it died, so it failed; and it is retried now,
        unless the event has nothing left to run (then it failed for good).

        Counted here rather than where the death is reported (the worker's main process) because
        only here is the event's row at hand for the labels; and so ``failed - retried`` still
        counts the events that gave up, crash loops included.
        """
        row: EventRow | None
        if isinstance(claimed, Attempt):
            row = claimed.event
        else:
            row = event_store.read_event(uow.session, event_id)
            if row is None or row.status != EventStatus.FAILED:
                return  # gone, or processed after all: the run did not fail
        metrics.observe_failed(
            row.target_module, row.event_type, None, retried=isinstance(claimed, Attempt)
        )

    def _traced(
        self, trace: Delivery, uow: UnitOfWork, registration: Registration, event: Event
    ) -> HandlerRun:
        """:meth:`_run_handler` in the event's process span (tracing on)."""
        queue = queue_name(event.target_module, self._prefix)
        with trace.processing(
            event.id, event.target_module, queue, _span_attributes(event)
        ) as span:
            run = self._run_handler(uow, registration, event)
            span.outcome("processed" if run.error is None else "failed", run.error)
        return run

    def _trace_unhandled(self, trace: Delivery, event: Event, reason: str) -> None:
        queue = queue_name(event.target_module, self._prefix)
        with trace.processing(
            event.id, event.target_module, queue, _span_attributes(event)
        ) as span:
            span.outcome("unhandled", reason)

    def _run_handler(self, uow: UnitOfWork, registration: Registration, event: Event) -> HandlerRun:
        """Run the handler in a savepoint of the attempt's unit of work: on an exception its
        writes, sends and callbacks are dropped and the exception returned."""
        if not registration.wants_session:
            # It cannot write through the session: spare the two round trips of a SAVEPOINT.
            try:
                registration(event, uow.session)
            except Exception as exc:
                return HandlerRun(exc)
            return HandlerRun()
        savepoint = uow.savepoint()
        try:
            with savepoint, uow.lent():
                registration(event, uow.session)
        except Exception as exc:
            return HandlerRun(exc, aborted_transaction=savepoint.aborted)
        return HandlerRun()

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
        if getattr(sender, "name", None) not in BUS_TASKS or sender.app is not self.runtime.celery:
            return
        if not isinstance(exception, WorkerLostError | TimeLimitExceeded):
            return  # an ordinary failure: the child recorded it itself
        request = sender.request
        if getattr(request, "id", None) != task_id:
            # A hard time limit is reported twice; only the first report carries the request.
            return
        reason = _why_lost(exception)
        headers = {**(request.headers or {}), INTERRUPTED_HEADER: reason}
        event_ids = (request.args or ["?"])[0]
        try:
            sender.signature_from_request(request, headers=headers).apply_async()
        except Exception:
            log.exception(
                "event_id=%s: could not send it again after its process died; the relay will "
                "after its lease",
                event_ids,
            )
            return
        log.warning("event_id=%s attempt lost, sent again: %s", event_ids, reason)

    def after_fork(self, **_: Any) -> None:
        """In a new pool child: never reuse the parent's pooled database connections."""
        if "engine" in self.runtime.__dict__:
            self.runtime.engine.dispose(close=False)


def _event_ids(given: Sequence[str] | str) -> list[uuid.UUID]:
    """The ids of a delivery (the intake has refused malformed messages already)."""
    ids: list[uuid.UUID] = []
    for value in [given] if isinstance(given, str) else given:
        try:
            ids.append(uuid.UUID(value))
        except (TypeError, ValueError, AttributeError):
            log.error("event_id=%r is not an event id; dropped", value)
    return ids


def _retry(row: EventRow, delay: float, trace: str | None) -> Dispatch:
    """A failed event's next attempt; with tracing on its span follows the failed one's."""
    return Dispatch(
        row.id, row.target_module, request_id=row.request_id, countdown=delay, trace=trace
    )


def _carried(row: EventRow, trace: Delivery | None) -> Dispatch:
    """An event sent on unrun (the rest of a batch), its trace carried on."""
    origin = trace.origin(row.id) if trace is not None else None
    return Dispatch(row.id, row.target_module, trace=origin)


def _span_attributes(event: Event) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "tenant_id": str(event.tenant_id),
        "event_type": event.event_type,
        "attempt": event.attempt,
    }
    if event.request_id:
        attributes["request_id"] = event.request_id
    return attributes


@contextmanager
def _logged_as(row: EventRow) -> Iterator[None]:
    """Every record logged inside names the event, its tenant and its publishing request."""
    with log_context(event_id=row.id, tenant_id=row.tenant_id, request_id=row.request_id):
        yield


def _ids(attempt: Attempt) -> dict[str, Any]:
    """The ids a report on an attempt is logged with (as ``extra``: cheaper than a context)."""
    row = attempt.event
    return {"event_id": row.id, "tenant_id": row.tenant_id, "request_id": row.request_id}


def _where(attempt: Attempt) -> str:
    row = attempt.event
    return f"event_id={row.id} request_id={row.request_id} {row.target_module}/{row.event_type}"


def _report_processed(attempt: Attempt, handler_seconds: float) -> None:
    row = attempt.event
    lag = (row.processed_at - row.created_at).total_seconds() if row.processed_at else 0.0
    metrics.observe_processed(row.target_module, row.event_type, handler_seconds, lag)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s processed (attempt %d, %.1f ms)",
            _where(attempt),
            attempt.number,
            handler_seconds * 1000,
            extra=_ids(attempt),
        )


def _report_failed(
    attempt: Attempt, error: BaseException, handler_seconds: float | None, delay: float | None
) -> None:
    row = attempt.event
    metrics.observe_failed(
        row.target_module, row.event_type, handler_seconds, retried=delay is not None
    )
    where, number, summary = _where(attempt), attempt.number, attempts.summarize_error(error)
    if delay is None:
        log.error(
            "%s failed for good after attempt %d: %s", where, number, summary, extra=_ids(attempt)
        )
    else:
        log.warning(
            "%s attempt %d failed, retry in %.2fs: %s",
            where,
            number,
            delay,
            summary,
            extra=_ids(attempt),
        )


def _report_unhandled(attempt: Attempt) -> None:
    row = attempt.event
    metrics.observe_failed(row.target_module, row.event_type, None, retried=False)
    log.error("%s failed: no handler registered", _where(attempt), extra=_ids(attempt))


def _why_lost(exc: BaseException) -> str:
    if isinstance(exc, TimeLimitExceeded) and exc.args:
        return f"TimeLimitExceeded: the attempt ran past the hard time limit ({exc.args[0]} s)"
    return attempts.summarize_error(exc)


def _infra_backoff(retries: int) -> float:
    cap = min(INFRA_RETRY_MAX_SECONDS, 2.0 ** min(retries, 6))
    return cap / 2 + random.uniform(0, cap / 2)


def install(runtime: Runtime, handlers: Registry = registry) -> Task:
    """Register the bus's tasks and their signal receivers on the bus's Celery app; returns
    ``eventbus.process_events``."""
    processor = EventProcessor(runtime, handlers)
    app = runtime.celery
    options: dict[str, Any] = {
        "bind": True,
        "max_retries": None,  # the count lives in PostgreSQL (EVENTBUS_RETRY_MAX_ATTEMPTS)
        "acks_late": True,
        "retry_on_worker_lost": False,  # counted by on_task_failure instead (module docstring)
        "reject_on_worker_lost": False,
        "ignore_result": True,
    }

    @app.task(name=PROCESS_EVENTS_TASK, **options)
    def process_events(self: Task, event_ids: list[str]) -> None:
        """Run the handlers of a batch; delivery is at least once, so ids may repeat."""
        request_id = getattr(self.request, REQUEST_ID_HEADER, None)
        with log_context(request_id=request_id):
            processor.process(self, event_ids)

    @app.task(name=PROCESS_EVENT_TASK, **options)
    def process_event(self: Task, event_id: str) -> None:
        """One event, as sent before batches (rolling upgrade)."""
        request_id = getattr(self.request, REQUEST_ID_HEADER, None)
        with log_context(event_id=event_id, request_id=request_id):
            processor.process(self, [event_id])

    signals.task_failure.connect(processor.on_task_failure, weak=False)
    signals.worker_process_init.connect(processor.after_fork, weak=False)
    task: Task = process_events
    return task
