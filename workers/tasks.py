"""``eventbus.process_events``: a wake-up; the worker runs what the bus chooses for it.

A message no longer says what to run: whatever ids it names (hints, and their traces), the
worker claims up to ``EVENTBUS_CLAIM_BATCH_SIZE`` ready events of the message's module from the
in-flight set (:mod:`bus.delivery.claims`: fair across tenants, in order per entity where the
handler asks, nothing of a paused module) and runs them, claim after claim, until a claim
comes back short or the delivery's time budget is spent. A full claim wakes one more process
of the module first, so idle siblings join a backlog. Batches therefore form from whatever is
waiting, at any load, and a lost message costs a wake-up: the worker's main process looks for
ready events every ``EVENTBUS_WORKER_POLL_SECONDS`` (:mod:`workers.waker`), which is also how a
failed event's retry runs when it comes due.

One batch is one unit of work: every claimed event's history row is locked (``FOR UPDATE SKIP
LOCKED``, one statement); each handler runs inside a SAVEPOINT of that transaction, so what it
writes through its ``session`` commits together with its processed status, or rolls back with
its failure alone; every outcome is written in one statement and the batch commits once.

How an attempt that never finishes is still counted (``EVENTBUS_RETRY_MAX_ATTEMPTS`` holds for a
handler that kills its process too). The claim is committed before the handlers run, so it
outlives a process that dies; the main process ends such claims (a pool child reported lost,
or found dead by the poll; a whole worker by the others' polls once its heartbeat stops), and
the next claim of each of those events says it was lost. Such an event runs alone: its attempt
is counted in a commit of its own *before* the handler runs (with a ``lost`` entry in its
history), and the outcome then replaces that mark. A crash loop thus ends failed after
``EVENTBUS_RETRY_MAX_ATTEMPTS`` counted runs plus the first, uncounted one.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task, signals
from celery.exceptions import TimeLimitExceeded
from sqlalchemy.exc import SQLAlchemyError

from bus.broker.celery_app import INFRA_RETRY_MAX_SECONDS
from bus.broker.dispatch import REQUEST_ID_HEADER, Dispatch
from bus.broker.queues import BUS_TASKS, PROCESS_EVENT_TASK, PROCESS_EVENTS_TASK, queue_name
from bus.delivery import attempts, claims
from bus.delivery.attempts import Attempt, Skip
from bus.events.rules import Change, save_changes, utcnow
from bus.observability import metrics
from bus.observability.logs import log_context
from bus.observability.tracing import Delivery, Receiver
from bus.runtime import Runtime
from bus.storage import event_store
from bus.storage.models import EventRow, EventStatus
from bus.uow import HandlerMisuse, UnitOfWork
from bus.webhooks import delivery
from bus.webhooks.delivery import Plan
from workers.event import Event
from workers.registry import Registration, Registry, registry
from workers.webhooks import Sent, Webhooks

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 10.0
ROOM_WAIT_SECONDS = 0.5
"""How long a claim that found only tenants without room waits for one of their answers."""
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

    def __init__(
        self,
        runtime: Runtime,
        handlers: Registry,
        modules: Sequence[str] | None = None,
        worker: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.handlers = handlers
        self._modules = list(modules) if modules else None
        self.claimer = claims.Claimer(runtime, worker or default_worker_name())
        self.webhooks = Webhooks(runtime, self.claimer)
        self._hints: dict[str, uuid.UUID] = {}  # each module's last claimed id
        # Whether a delivery of this thread ended with claims outstanding (threads pool: each
        # thread runs its own deliveries).
        self._local = threading.local()
        limit = runtime.settings.task_time_limit_seconds
        self._budget = min(BATCH_BUDGET_SECONDS, limit / 10)
        self._prefix = runtime.settings.queue_prefix
        self._tracing = (
            Receiver(runtime.settings.broker_url) if runtime.settings.otel_enabled else None
        )

    # --- the tasks -------------------------------------------------------------------------

    def process(self, task: Task, event_ids: Sequence[str]) -> None:
        """One wake-up: claim and run the module's ready events until a claim comes back short
        or the time budget is spent (a full claim has woken a sibling to go on)."""
        request = task.request
        modules = self._modules_of(request)
        trace = None
        if self._tracing is not None:
            trace = self._tracing.delivery(lambda name: getattr(request, name, None), request.id)
        ends = time.monotonic() + self._budget
        try:
            if getattr(self._local, "dirty", False):
                self.claimer.release_mine()
                self._local.dirty = False
            for module in modules:
                while (hint := self._claim_and_run(module, trace)) is not None:
                    if time.monotonic() >= ends:
                        self._wake(module, hint)  # the rest in a delivery of its own
                        break
        except SQLAlchemyError as exc:
            # The database, not the events, failed: try again later without spending a retry;
            # the claims left are given back first (no run of them died).
            self._local.dirty = True
            countdown = _infra_backoff(request.retries or 0)
            log.warning(
                "%s: database error, trying again in %.1fs: %s",
                ", ".join(modules),
                countdown,
                attempts.summarize_error(exc),
            )
            raise task.retry(countdown=countdown, exc=exc) from exc

    def _modules_of(self, request: Any) -> list[str]:
        """The module a message woke this worker for (its queue), else every one it serves."""
        queue = (request.delivery_info or {}).get("routing_key")
        modules = self.modules
        if isinstance(queue, str) and queue.startswith(self._prefix):
            module = queue[len(self._prefix) :]
            if module in modules:
                return [module]
        return modules

    @property
    def modules(self) -> list[str]:
        return self._modules if self._modules is not None else self.handlers.modules()

    def _claim_and_run(self, module: str, trace: Delivery | None) -> uuid.UUID | None:
        """Claim a batch of ``module`` and run it; one of its ids when more may be ready (a
        wake-up's hint): the claim was full, or the module has ordered handlers (running an
        entity's event readies its next one, which no message announces)."""
        order = self.webhooks.order(module, self.handlers.order(module))
        limit = self.claimer.size(module, order.any)
        if self.webhooks.has_endpoints(module) and module not in self.handlers.modules():
            limit = self.webhooks.claim_size(limit)
        with self.runtime.unit_of_work() as uow:
            skip = self.webhooks.saturated(module)
            claims = self.claimer.claim(uow, module, order, limit, skip)
            uow.commit()
        if not claims:
            if skip and self.webhooks.wait_for_answer(module, ROOM_WAIT_SECONDS):
                # Tenants skipped for want of room: one of their answers came, claim again.
                return self._hints.get(module) or uuid.uuid4()
            return None
        self._hints[module] = claims[-1].id
        # The batch's time only: the claim's own cost is fixed whatever its size (counted per
        # event it shrank the claims, and a smaller claim cost as much: a spiral down to one
        # event a claim when dead rows made claims slow).
        started = time.perf_counter()
        self._local.dirty = True
        full = len(claims) >= limit
        if full:
            self._wake(module, claims[-1].id)
        if order.any:
            # In commit order: runs of fresh claims as batches, a lost one alone, each
            # entity's events stopping at its first failure.
            stopped: set[Key] = set()
            for segment in _segments(claims):
                if segment[0].lost is None:
                    stopped |= self._run_fresh(segment, order, trace, stopped)
                else:
                    stopped |= self._run_lost(module, segment[0], trace, stopped)
        else:
            self._run_fresh([c for c in claims if c.lost is None], order, trace, set())
            for claim in claims:
                if claim.lost is not None:
                    self._run_lost(module, claim, trace, set())
        self._local.dirty = False
        self.claimer.ran(module, len(claims), limit, time.perf_counter() - started)
        return claims[-1].id if full or order.any else None

    def _run_fresh(
        self,
        fresh: Sequence[claims.Claim],
        order: claims.Order,
        trace: Delivery | None,
        stopped: set[Key],
    ) -> set[Key]:
        """Claims no run of which was lost, as one batch; the keys of ordered events that
        failed (``stopped``: keys whose events must not run now)."""
        if not fresh:
            return set()
        with self.runtime.unit_of_work() as uow:
            runs, skips = attempts.begin_many(uow, [c.id for c in fresh])
            self._log_skips(skips)
            if order.any:
                runs, later = _before_first_skip(fresh, runs, skips)
                self.claimer.release(uow, later)
            if skips:
                self.claimer.release(uow, list(skips))
            return self._run(uow, runs, trace, stopped)

    def _wake(self, module: str, hint: uuid.UUID) -> None:
        """One more wake-up for ``module`` (bounded on the broker: none if enough wait)."""
        self.runtime.dispatcher.wake(module, hint)

    def _run_lost(
        self, module: str, claim: claims.Claim, trace: Delivery | None, stopped: set[Key]
    ) -> set[Key]:
        """An event whose last claim outlived its process: its attempt counted in advance and
        committed first (module docstring), then run alone. Returns its key if it is of an
        ordered handler and failed; an event of a key in ``stopped`` (one failed before it in
        this claim) is given back still marked lost, for a later claim."""
        event_id, reason = claim.id, claim.lost or ""
        with self.runtime.unit_of_work() as uow:
            claimed = attempts.begin(uow, event_id, wait_seconds=LOCK_WAIT_SECONDS)
            if isinstance(claimed, Attempt) and _key(claimed.event) in stopped:
                self.claimer.give_back_lost(uow, [(event_id, reason)])
                uow.commit()
                return set()
            self._count_interrupted_run(uow, event_id, claimed)
            if isinstance(claimed, Skip):
                self._log_skips({event_id: claimed})
                self.claimer.release(uow, [event_id])
                uow.commit()
                return set()
            policy = self.runtime.retry_policy
            counted = attempts.count_in_advance(uow, claimed, policy, reason)
            # The mark cleared the claim; a second death must show too.
            self.claimer.restamp(uow, module, [event_id])
            registration = self.handlers.find(module, claimed.event.event_type)
            if registration is not None and registration.ordered:
                # A last attempt's mark says failed with no retry to come, which lets the
                # entity's later events go: its key is held while it runs (its outcome sets
                # the hold the handler asks for; a death leaves it held for an operator).
                self.claimer.hold_while_running(uow, event_id)
            uow.commit()
            again = attempts.reclaim(uow, counted)
            if again is None:
                return set()
            return self._run(uow, [again], trace)

    def _run(
        self,
        uow: UnitOfWork,
        runs: Sequence[Attempt],
        trace: Delivery | None = None,
        stopped: set[Key] | None = None,
    ) -> set[Key]:
        """Each claimed event's handler in its own savepoint, every outcome in one statement
        and their attempt history entries in one more, one commit; then each failure's retry
        is sent on its own with its delay. Returns the keys of the ordered events that failed;
        events of keys in ``stopped`` (and of those) are given back, not run.

        Past the batch's time budget the events not yet run are sent again in a message of
        their own, so a batch never runs into the task's time limit. With ``trace`` (tracing
        on) each handler runs in its event's span, and the sends carry the events' traces on.
        """
        out = _Outcomes()
        ends = time.monotonic() + self._budget
        # Chosen once per batch, so tracing off costs the loop nothing.
        invoke = self._run_handler if trace is None else functools.partial(self._traced, trace)
        # Entities whose ordered event failed (before, or in this batch): their later events
        # wait.
        stopped = set(stopped or ())
        failed: set[Key] = set()
        behind: list[uuid.UUID] = []
        module = runs[0].event.target_module if runs else ""
        handled = [self.handlers.find(a.event.target_module, a.event.event_type) for a in runs]
        plans = self.webhooks.plan(uow, module, runs, all(handled))
        for index, attempt in enumerate(runs):
            if index and time.monotonic() > ends:
                self.claimer.release(uow, [rest.event.id for rest in runs[index:]])
                log.info("batch past %.1fs: %d events given back", self._budget, len(runs) - index)
                break
            row = attempt.event
            key = _key(row)
            if key in stopped:
                behind.append(row.id)
                continue
            registration = handled[index]
            plan = plans.get(row.id)
            if plan is not None and plan.ordered:
                # One event of an ordered endpoint's entity at a time: its outcome comes later.
                stopped.add(key)
                failed.add(key)
            if registration is None:
                self._without_handler(uow, out, attempt, plan, trace)
                continue
            began, started = utcnow(), time.perf_counter()
            with _logged_as(row):
                run = invoke(uow, registration, Event.of(row, attempt.number))
            elapsed = time.perf_counter() - started
            out.spent(row.tenant_id, elapsed)
            if plan is not None and not run.aborted_transaction:
                out.joint.append((plan, run, registration, began))
                continue
            if run.error is None:
                out.changes.append(attempts.processed(attempt, began))
                out.reports.append(functools.partial(_report_processed, attempt, elapsed))
                continue
            if run.aborted_transaction:
                self._after_aborted_transaction(uow, runs, attempt, run.error, trace)
                return {key}
            if registration.ordered:
                stopped.add(key)
                failed.add(key)
            self._failed(uow, out, (attempt, registration), run.error, (began, elapsed), trace)
        if behind:
            self.claimer.release(uow, behind)
        self._commit(uow, out, module)
        return failed

    def _commit(self, uow: UnitOfWork, out: _Outcomes, module: str) -> None:
        """The batch's requests started (:meth:`_send`); every outcome in one statement, the
        usage and holds, one commit; then the reports."""
        if out.parked or out.joint:
            self._send(uow, out)
        if out.verdicts:
            delivery.save(uow.session, out.verdicts, self.runtime.settings, utcnow())
        save_changes(uow, out.changes)
        if module:
            self.claimer.record(uow, module, out.usage(), out.holds)
        uow.commit()
        for report in out.reports:
            report()
        self.claimer.flush_usage()

    def _unhandled(self, out: _Outcomes, attempt: Attempt, trace: Delivery | None) -> None:
        """No handler here and no endpoint takes it: failed, with no retry."""
        row = attempt.event
        reason = f"No handler for {row.target_module}/{row.event_type}"
        out.changes.append(attempts.failed(attempt, reason, None))
        out.reports.append(functools.partial(_report_unhandled, attempt))
        if trace is not None:
            self._trace_unhandled(trace, Event.of(row, attempt.number), reason)

    def _without_handler(
        self,
        uow: UnitOfWork,
        out: _Outcomes,
        attempt: Attempt,
        plan: Plan | None,
        trace: Delivery | None,
    ) -> None:
        """An event no handler here takes: if no endpoint takes it either, failed (no retry);
        else sent without the batch, or, with nothing to send (every endpoint acknowledged it,
        or it waits for a disabled one), decided now."""
        if plan is None:
            self._unhandled(out, attempt, trace)
        elif plan.send:
            out.parked.append(plan)
        else:
            self._webhook_outcome(uow, out, self.webhooks.judge_now(plan, None, utcnow()))

    def _send(self, uow: UnitOfWork, out: _Outcomes) -> None:
        """Start the batch's requests; leave the endpoints-only events to the recorder and
        wait for the others (a handler took them too: its writes commit with their outcome)."""
        parked, over = self.webhooks.admit(out.parked)
        if over:  # back to the in-flight set: the next claims skip their tenants till room
            self.claimer.release(uow, [plan.event_id for plan in over])
        sent = self.webhooks.send([*parked, *(plan for plan, *_ in out.joint)])
        self.webhooks.park(parked, sent)
        self._joint_outcomes(uow, out, out.joint, sent)

    def _joint_outcomes(
        self,
        uow: UnitOfWork,
        out: _Outcomes,
        joint: Sequence[Joint],
        sent: Mapping[uuid.UUID, Sent],
    ) -> None:
        """Events a handler and endpoints take: the handler's outcome and the requests'."""
        for plan, run, registration, began in joint:
            handler_error = None
            if run.error is not None:
                delay = self.runtime.retry_policy.delay(plan.attempt.number)
                handler_error = (attempts.summarize_error(run.error), delay)
            verdict = self.webhooks.judge_now(plan, sent.get(plan.event_id), began, handler_error)
            if verdict.hold and (registration.ordered or plan.ordered):
                out.holds.append((plan.event_id, registration.on_failure))
            self._webhook_outcome(uow, out, verdict)

    def _webhook_outcome(self, uow: UnitOfWork, out: _Outcomes, verdict: delivery.Verdict) -> None:
        """A verdict in this batch: its change, rows and health saved with the batch's."""
        out.verdicts.append(verdict)
        out.changes.append(verdict.change)
        self.webhooks.wake_for_retry(uow, verdict)

    def _failed(
        self,
        uow: UnitOfWork,
        out: _Outcomes,
        ran: tuple[Attempt, Registration],
        error: Exception,
        timing: tuple[datetime, float],
        trace: Delivery | None,
    ) -> None:
        """A failed run's outcome: retried after a delay (a wake-up sent for it), or failed for
        good (an ordered handler's key then held or let go, as it asks)."""
        attempt, registration = ran
        began, elapsed = timing
        row = attempt.event
        delay = self.runtime.retry_policy.delay(attempt.number)
        out.changes.append(attempts.failed(attempt, attempts.summarize_error(error), delay, began))
        if delay is None and registration.ordered:
            out.holds.append((row.id, registration.on_failure))
        if delay is not None:
            # A wake-up when the retry is due (bounded like any other; the poll finds it
            # otherwise), carrying the failed run's trace on.
            last = trace.last if trace is not None else None
            uow.send(Dispatch(row.id, row.target_module, countdown=delay, trace=last))
        out.reports.append(functools.partial(_report_failed, attempt, error, elapsed, delay))

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
        self.claimer.release(uow, [other.event.id for other in runs if other is not culprit])
        uow.commit()
        if again is not None:
            _report_failed(again, error, None, delay)

    @staticmethod
    def _log_skips(skips: Mapping[uuid.UUID, Skip]) -> None:
        for event_id, why in skips.items():
            log.info("event_id=%s skipped: %s", event_id, why)

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
        """In the worker's main process: a pool child died running a delivery; end the claims
        it held, so they are claimed again (as lost, counted in advance: module docstring)."""
        if getattr(sender, "name", None) not in BUS_TASKS or sender.app is not self.runtime.celery:
            return
        if not isinstance(exception, WorkerLostError | TimeLimitExceeded):
            return  # an ordinary failure: the child recorded it itself
        reason = _why_lost(exception)
        try:
            rescued = claims.rescue(self.runtime, self.claimer.worker, self.modules, reason=reason)
        except Exception:
            log.exception("a pool process died (%s); its claims end at the next poll", reason)
            return
        log.warning("a pool process died (%s); its claims of %s end", reason, rescued or "none")
        request = sender.request
        if not rescued or getattr(request, "id", None) != task_id:
            # (A hard time limit is reported twice; only the first report carries the request.)
            return
        # The dead delivery's message again (its traces with it): the wake-up for what it held.
        try:
            sender.signature_from_request(request).apply_async()
        except Exception:
            log.exception("could not wake %s again; the next poll will", ", ".join(rescued))

    def after_fork(self, **_: Any) -> None:
        """In a new pool child: never reuse the parent's pooled database connections."""
        if "engine" in self.runtime.__dict__:
            self.runtime.engine.dispose(close=False)


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


Joint = tuple[Plan, HandlerRun, Registration, datetime]
"""An event a handler ran that endpoints take too: its plan, the handler's run, when it began."""

Key = tuple[uuid.UUID, str, str]
"""An entity: tenant, entity type, entity id (of one module)."""


def _key(row: EventRow) -> Key:
    return row.tenant_id, row.entity_type, row.entity_id


@dataclass
class _Outcomes:
    """What a batch's runs decided: the status changes (saved at once), the reports made after
    the commit, the keys that final failures of ordered handlers hold, and the handler time
    each tenant used."""

    changes: list[Change] = field(default_factory=list)
    reports: list[Callable[[], None]] = field(default_factory=list)
    holds: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    used: dict[uuid.UUID, list[float]] = field(default_factory=dict)
    parked: list[Plan] = field(default_factory=list)
    """Events only endpoints take: sent without the batch (workers.webhooks)."""
    verdicts: list[delivery.Verdict] = field(default_factory=list)
    """Webhook outcomes decided in the batch: their delivery rows and endpoints' health."""
    joint: list[Joint] = field(default_factory=list)
    """Events a handler took whose endpoints take them too: their requests are waited for."""

    def spent(self, tenant_id: uuid.UUID, seconds: float) -> None:
        """A handler of ``tenant_id`` ran ``seconds``: its usage, for fair shares."""
        tenant = self.used.setdefault(tenant_id, [0.0, 0.0])
        tenant[0] += seconds
        tenant[1] += 1

    def usage(self) -> list[tuple[uuid.UUID, float, float]]:
        return [(t, seconds, events) for t, (seconds, events) in self.used.items()]


def _segments(claimed: Sequence[claims.Claim]) -> list[list[claims.Claim]]:
    """Claims in commit order cut into runs of fresh ones and single lost ones."""
    segments: list[list[claims.Claim]] = []
    for claim in claimed:
        if claim.lost is None and segments and segments[-1][0].lost is None:
            segments[-1].append(claim)
        else:
            segments.append([claim])
    return segments


def _before_first_skip(
    claimed: Sequence[claims.Claim], runs: list[Attempt], skips: Mapping[uuid.UUID, Skip]
) -> tuple[list[Attempt], list[uuid.UUID]]:
    """The runs of an ordered module's claim committed before the first event that may not
    run now (other than one processed already), and the ids of the others, to give back: an
    entity's later events must not pass it."""
    blocked = {event_id for event_id, why in skips.items() if why is not Skip.PROCESSED}
    if not blocked:
        return runs, []
    first = min((c.created_at, c.id) for c in claimed if c.id in blocked)
    before = [a for a in runs if (a.event.created_at, a.event.id) < first]
    return before, [a.event.id for a in runs if (a.event.created_at, a.event.id) >= first]


def _infra_backoff(retries: int) -> float:
    cap = min(INFRA_RETRY_MAX_SECONDS, 2.0 ** min(retries, 6))
    return cap / 2 + random.uniform(0, cap / 2)


def default_worker_name() -> str:
    """A worker's Celery node name, as ``eventbus worker`` makes it (and heartbeats it)."""
    return f"eventbus-{os.getpid()}@{socket.gethostname()}"


def install(
    runtime: Runtime,
    handlers: Registry = registry,
    modules: Sequence[str] | None = None,
    worker: str | None = None,
) -> Task:
    """Register the bus's tasks and their signal receivers on the bus's Celery app; returns
    ``eventbus.process_events``. ``modules``: those the worker serves (all with a handler when
    None); ``worker``: its node name."""
    processor = EventProcessor(runtime, handlers, modules, worker)
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
    # A pool process (or a solo worker) stopping lets its webhook requests finish first.
    signals.worker_process_shutdown.connect(processor.webhooks.drain, weak=False)
    signals.worker_shutdown.connect(processor.webhooks.drain, weak=False)
    signals.worker_process_init.connect(processor.after_fork, weak=False)
    task: Task = process_events
    return task
