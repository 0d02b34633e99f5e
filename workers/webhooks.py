"""Webhook delivery in a worker process: an event of a module with endpoints is sent to them
by the ordinary ``eventbus worker`` (the rules: :mod:`bus.webhooks.delivery`).

An event that only endpoints take (no handler of this worker) does not hold its batch: its
requests start on the sender's event loop (:mod:`workers.sender`: keep-alive pools, every
request of a batch at once) and the batch commits without it, its claim still held. When the
event's last answer comes, it is *parked* here and a recorder thread writes the outcomes of
whatever has come, as one unit of work: the events locked again (``FOR UPDATE SKIP LOCKED``),
each checked to be at the attempt it was claimed at, their status changes, delivery rows and
endpoints' health saved, one commit. Each tenant has a share of the process's requests
(``EVENTBUS_WEBHOOK_TENANT_CONCURRENCY``): a claim holds at most half a share and skips the
tenants with more than half in flight, so a 5 s endpoint delays only its own tenant's events,
and batches form at any load. A process that dies with requests in flight leaves its claims,
which end as any lost run's do: the event is claimed again and sent to the endpoints that have
not acknowledged it (at least once; ``webhook-id`` lets a receiver drop the repeat).

An event a handler of this worker takes too waits in its batch for its requests (bounded by
``EVENTBUS_WEBHOOK_TIMEOUT_SECONDS``): the handler's writes commit with the event's outcome.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from bus.broker.dispatch import Dispatch
from bus.delivery import attempts
from bus.delivery.attempts import Attempt, Skip
from bus.delivery.claims import Claimer, Order
from bus.events.rules import Change, save_changes, utcnow
from bus.events.schemas import event_view
from bus.observability import metrics
from bus.runtime import Runtime
from bus.storage import claim_store, endpoint_store
from bus.uow import UnitOfWork
from bus.webhooks import delivery, payloads
from bus.webhooks.delivery import Plan, Schedule, Verdict
from bus.webhooks.endpoints import signing_secrets
from workers.sender import Request, Response, Sender, sender_for

log = logging.getLogger(__name__)

CACHE_SECONDS = 1.0
"""How stale a worker's view of which modules have endpoints (and ordered ones) may be."""
BUSY_RETRY_SECONDS = 0.02
BUSY_GIVE_UP_SECONDS = 30.0
"""A parked event still locked elsewhere this long is left to its claim's end."""
RECORD_BATCH = 1000
DRAIN_SLACK_SECONDS = 5.0
"""How long past the request timeout a stopping process waits for its outcomes to be written."""

Sent = dict[uuid.UUID, "concurrent.futures.Future[Response]"]
"""An event's requests, by endpoint id."""


@dataclass(slots=True)
class _Recording:
    """What one recording decided and writes."""

    verdicts: list[Verdict] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    holds: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    stale: list[uuid.UUID] = field(default_factory=list)
    recorded: list[Parked] = field(default_factory=list)
    reports: list[Callable[[], None]] = field(default_factory=list)
    again: list[Parked] = field(default_factory=list)


@dataclass(slots=True)
class Parked:
    """An event whose requests were started; recorded when they have all answered."""

    plan: Plan
    sent: Sent
    started_at: datetime
    since: float = 0.0


class Webhooks:
    """One worker process's deliveries (a new sender and recorder after a fork)."""

    def __init__(self, runtime: Runtime, claimer: Claimer) -> None:
        self.runtime = runtime
        self.claimer = claimer
        settings = runtime.settings
        self.schedule = Schedule.from_settings(settings)
        self._limit = settings.webhook_concurrency
        self._cache: dict[tuple[str, str], tuple[float, object]] = {}
        self._room = threading.Condition()
        self._made = threading.Lock()
        self._inflight = 0
        self._tenant_limit = settings.webhook_tenant_concurrency
        self._by_tenant: dict[tuple[str, uuid.UUID], int] = {}
        self._eased: set[str] = set()  # modules a saturated tenant of which got room again
        self._unrecorded = 0  # events parked and not yet written
        self._refused: set[tuple[str, uuid.UUID]] = set()  # turned away since their last answer
        self._pid = 0
        self._sender: Sender | None = None
        self._parked: queue.SimpleQueue[Parked] = queue.SimpleQueue()

    # --- what a module's claims need -----------------------------------------------------

    def _cached(self, kind: str, module: str, load: Callable[[Session], object]) -> object:
        now = time.monotonic()
        hit = self._cache.get((kind, module))
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        with self.runtime.unit_of_work() as uow:
            value = load(uow.session)
        self._cache[(kind, module)] = (now, value)
        return value

    def has_endpoints(self, module: str) -> bool:
        def load(session: Session) -> object:
            return endpoint_store.module_has_any(session, module)

        return bool(self._cached("any", module, load))

    def order(self, module: str, handlers: Order) -> Order:
        """The handlers' order for ``module``'s claims, with the event types its enabled
        ordered endpoints take ordered too (for every tenant: the claim orders per module)."""
        if not self.has_endpoints(module):
            return handlers

        def load(session: Session) -> object:
            return delivery.order_types(endpoint_store.ordered_types(session, module))

        named, every = self._cached("order", module, load)  # type: ignore[misc]
        if every:
            return Order(rest=True)
        if not named:
            return handlers
        types = tuple(sorted(set(handlers.types) | set(named)))
        except_types = tuple(t for t in handlers.except_types if t not in named)
        return Order(types, handlers.rest, except_types)

    def plan(
        self, uow: UnitOfWork, module: str, runs: Sequence[Attempt], all_handled: bool
    ) -> dict[uuid.UUID, Plan]:
        """The batch's deliveries; none read when every event has a handler here and no
        tenant has an endpoint of the module (seen within :data:`CACHE_SECONDS`)."""
        if all_handled and not self.has_endpoints(module):
            return {}
        return delivery.plan(uow.session, module, runs)

    # --- sending -----------------------------------------------------------------------------

    def _sender_here(self) -> Sender:
        pid = os.getpid()
        with self._made:  # a threads pool's threads share one sender and one recorder
            return self._sender_of(pid)

    def _sender_of(self, pid: int) -> Sender:
        if self._sender is None or self._pid != pid:
            self._sender = sender_for(self.runtime.settings)
            self._pid = pid
            self._inflight = 0
            self._by_tenant = {}
            self._refused = set()
            self._unrecorded = 0
            self._parked = queue.SimpleQueue()
            threading.Thread(
                target=self._record_forever, name="webhook-recorder", daemon=True
            ).start()
        return self._sender

    def admit(self, plans: Sequence[Plan]) -> tuple[list[Plan], list[Plan]]:
        """Of a batch's endpoints-only events, those its tenants' shares of this process have
        room for (``EVENTBUS_WEBHOOK_TENANT_CONCURRENCY``; a tenant with none in flight always
        gets one event), and the rest, to give back: a claim may hold more of a tenant's events
        than its share, and sent anyway they would fill the process (then every tenant waits)."""
        admitted: list[Plan] = []
        refused: list[Plan] = []
        with self._room:
            taken = dict(self._by_tenant)
        for item in plans:
            key = _owner(item)
            now_in = taken.get(key, 0)
            if now_in and now_in + len(item.send) > self._tenant_limit:
                refused.append(item)
                with self._room:
                    self._refused.add(key)  # skipped by the claims until an answer comes
                continue
            taken[key] = now_in + len(item.send)
            admitted.append(item)
        return admitted, refused

    def send(self, plans: Sequence[Plan]) -> dict[uuid.UUID, Sent]:
        """Start every request of ``plans`` at once (after waiting for room under
        ``EVENTBUS_WEBHOOK_CONCURRENCY``); each event's futures by endpoint."""
        sender = self._sender_here()
        now = utcnow()
        stamp = int(time.time())
        requests: list[Request] = []
        owner = {item.event_id: _owner(item) for item in plans}
        for item in plans:
            body_view = event_view(item.attempt.event)
            for endpoint in item.send:
                headers, body = payloads.build(
                    body_view, endpoint.format, signing_secrets(endpoint, now), timestamp=stamp
                )
                requests.append(Request((item.event_id, endpoint.id), endpoint.url, headers, body))
        if not requests:
            return {}
        with self._room:
            self._room.wait_for(lambda: self._inflight < self._limit)
            self._inflight += len(requests)
            for request in requests:
                key = owner[request.key[0]]  # type: ignore[index]
                self._by_tenant[key] = self._by_tenant.get(key, 0) + 1
        futures = sender.send(requests)
        sent: dict[uuid.UUID, Sent] = {}
        for request, future in zip(requests, futures, strict=True):
            event_id, endpoint_id = request.key  # type: ignore[misc]
            sent.setdefault(event_id, {})[endpoint_id] = future
            key = owner[event_id]
            future.add_done_callback(lambda f, k=key: self._answered(k, f))
        return sent

    def _answered(
        self, key: tuple[str, uuid.UUID], future: concurrent.futures.Future[Response]
    ) -> None:
        if not future.cancelled() and future.exception() is None:
            answer = future.result()
            metrics.observe_webhook(key[0], answer.status, answer.seconds)
        with self._room:
            self._inflight -= 1
            left = self._by_tenant.get(key, 1) - 1
            if left:
                self._by_tenant[key] = left
            else:
                self._by_tenant.pop(key, None)
            if left == self._tenant_limit - self._tenant_limit // 2 or key in self._refused:
                self._eased.add(key[0])
                self._refused.discard(key)
            self._room.notify_all()

    def claim_size(self, limit: int) -> int:
        """A claim of a module only endpoints take holds at most half a tenant's share of
        events: a bigger one would mostly be given back (:meth:`admit`)."""
        return max(1, min(limit, self._tenant_limit // 2))

    def wait_for_answer(self, module: str, timeout: float) -> bool:
        """Wait (at most ``timeout``) until one of ``module``'s requests in flight answers;
        False at once when none is in flight."""

        def mine() -> int:
            return sum(n for (m, _), n in self._by_tenant.items() if m == module)

        with self._room:
            before = mine()
            if not before:
                return False
            self._room.wait_for(lambda: mine() < before, timeout=timeout)
            return True

    def saturated(self, module: str) -> list[uuid.UUID]:
        """The tenants whose requests for ``module`` fill their share of this process
        (``EVENTBUS_WEBHOOK_TENANT_CONCURRENCY``): its next claims skip them."""
        with self._room:
            # Room for a whole claim's worth, or none: a claim then never holds more of a
            # tenant than it may send (those would be given back, and claimed again).
            full = {
                tenant
                for (m, tenant), count in self._by_tenant.items()
                if m == module and count > self._tenant_limit - self._tenant_limit // 2
            }
            return sorted(full | {tenant for m, tenant in self._refused if m == module})

    def park(self, plans: Sequence[Plan], sent: Mapping[uuid.UUID, Sent]) -> None:
        """Leave ``plans``' outcomes to the recorder, each once its requests have answered."""
        started = utcnow()
        with self._room:
            self._unrecorded += len(plans)
        for item in plans:
            parked = Parked(item, sent[item.event_id], started)
            _when_all_done(list(parked.sent.values()), lambda p=parked: self._parked.put(p))

    def judge_now(
        self,
        item: Plan,
        sent: Sent | None,
        started_at: datetime,
        handler_error: tuple[str, float | None] | None = None,
    ) -> Verdict:
        """An event's verdict in its own batch: its requests (if any) waited for."""
        answers = {
            endpoint_id: _answer(future, self.runtime.settings.webhook_timeout_seconds)
            for endpoint_id, future in (sent or {}).items()
        }
        return delivery.judge(
            item,
            answers,
            self.schedule,
            self.runtime.settings,
            utcnow(),
            started_at,
            handler_error=handler_error,
        )

    # --- the recorder --------------------------------------------------------------------------

    def _record_forever(self) -> None:
        later: list[Parked] = []
        while True:
            try:
                first = self._parked.get(timeout=BUSY_RETRY_SECONDS if later else None)
                items = [first]
            except queue.Empty:
                items = []
            while len(items) < RECORD_BATCH:
                try:
                    items.append(self._parked.get_nowait())
                except queue.Empty:
                    break
            items += later
            later = []
            if not items:
                continue
            try:
                later = self.record(items)
            except Exception:
                log.exception("webhook outcomes of %d events not recorded; retrying", len(items))
                time.sleep(1.0)
                later = items
            if later:
                time.sleep(BUSY_RETRY_SECONDS)

    def record(self, items: Sequence[Parked]) -> list[Parked]:
        """Write the outcomes of answered events in one unit of work; the ones still locked
        by another transaction (their own batch's, not yet committed) come back, to try again."""
        by_id = {p.plan.event_id: p for p in items}
        now = utcnow()
        out = _Recording()
        with self.runtime.unit_of_work() as uow:
            runs, skips = attempts.begin_many(uow, list(by_id))
            for event_id, why in skips.items():
                parked = by_id[event_id]
                if why is Skip.BUSY:
                    parked.since = parked.since or time.monotonic()
                    if time.monotonic() - parked.since < BUSY_GIVE_UP_SECONDS:
                        out.again.append(parked)
                        continue
                # Moved on without us (processed, given up, gone): its acknowledgements stand.
                out.verdicts.append(self._verdict(parked, parked.plan, now))
            for run in runs:
                self._decide(uow, by_id[run.event.id], run, now, out)
            self._save(uow, out, now, next(iter(by_id)))
            uow.commit()
        with self._room:
            self._unrecorded -= len(items) - len(out.again)
            self._room.notify_all()
        for report in out.reports:
            report()
        self.claimer.flush_usage()
        return out.again

    def drain(self, **_: object) -> None:
        """As the process stops: wait for the requests under way and their outcomes written
        (at most the request timeout and a few seconds), so a restart does not send again what
        a receiver already acknowledged."""
        if self._sender is None or self._pid != os.getpid():
            return
        wait = self.runtime.settings.webhook_timeout_seconds + DRAIN_SLACK_SECONDS
        with self._room:
            done = self._room.wait_for(
                lambda: self._inflight == 0 and self._unrecorded <= 0, timeout=wait
            )
            left = self._unrecorded
        if not done:
            log.warning("stopping with %d webhook outcomes unwritten: they are sent again", left)

    def _decide(
        self, uow: UnitOfWork, parked: Parked, run: Attempt, now: datetime, out: _Recording
    ) -> None:
        """A parked event locked again: its verdict, unless another delivery ran it meanwhile
        (then only its acknowledgements are kept, and its claim given back)."""
        claimed = parked.plan.attempt
        expected = claimed.number if claimed.counted else claimed.failures_before
        if run.event.retry_count != expected:
            out.verdicts.append(self._verdict(parked, parked.plan, now))
            out.stale.append(run.event.id)
            return
        attempt = Attempt(run.event, claimed.number, claimed.counted)
        current = dataclasses.replace(parked.plan, attempt=attempt)
        verdict = self._verdict(parked, current, now)
        out.verdicts.append(verdict)
        out.changes.append(verdict.change)
        out.recorded.append(parked)
        if verdict.hold and current.ordered:
            out.holds.append((run.event.id, claim_store.HOLD_BLOCK))
        out.reports.append(_reporter(attempt, verdict))
        row = run.event
        if not self.wake_for_retry(uow, verdict) and current.ordered and verdict.error is None:
            # The entity's next event is ready now: no message says so otherwise.
            uow.send(Dispatch(row.id, row.target_module))

    def _save(self, uow: UnitOfWork, out: _Recording, now: datetime, hint: uuid.UUID) -> None:
        """The recording's writes: delivery rows and health, status changes, the tenants'
        usage, holds, stale claims given back; a wake-up for modules a skipped tenant of which
        has room again."""
        delivery.save(uow.session, out.verdicts, self.runtime.settings, now)
        save_changes(uow, out.changes, now)
        with self._room:
            eased, self._eased = self._eased, set()
        for module in eased:
            uow.send(Dispatch(hint, module))
        for module, used in _usage(out.recorded).items():
            # A tenant's share of the module counts its requests' time: a slow endpoint costs
            # its own tenant (bus.delivery.fairness).
            self.claimer.record(uow, module, used, [])
        if out.holds:
            claim_store.set_hold(uow.session, out.holds)
        if out.stale:
            self.claimer.release(uow, out.stale)

    def wake_for_retry(self, uow: UnitOfWork, verdict: Verdict) -> bool:
        """A wake-up when the verdict's retry is due, if that is within
        ``EVENTBUS_RETRY_MAX_SECONDS`` (the broker's bound; the poll finds later ones)."""
        row = verdict.change.event
        if verdict.delay is None or verdict.delay > self.runtime.settings.retry_max_seconds:
            return False
        uow.send(Dispatch(row.id, row.target_module, countdown=verdict.delay))
        return True

    def _verdict(self, parked: Parked, item: Plan, now: datetime) -> Verdict:
        answers = {eid: _answer(f, 0) for eid, f in parked.sent.items()}
        return delivery.judge(
            item, answers, self.schedule, self.runtime.settings, now, parked.started_at
        )


def _owner(item: Plan) -> tuple[str, uuid.UUID]:
    row = item.attempt.event
    return row.target_module, row.tenant_id


def _usage(items: Sequence[Parked]) -> dict[str, list[tuple[uuid.UUID, float, float]]]:
    """Per module, each tenant's request time (an event's slowest request) and events."""
    totals: dict[tuple[str, uuid.UUID], list[float]] = {}
    for parked in items:
        row = parked.plan.attempt.event
        seconds = max((_answer(f, 0).seconds for f in parked.sent.values()), default=0.0)
        total = totals.setdefault((row.target_module, row.tenant_id), [0.0, 0.0])
        total[0] += seconds
        total[1] += 1
    by_module: dict[str, list[tuple[uuid.UUID, float, float]]] = {}
    for (module, tenant), (seconds, events) in totals.items():
        by_module.setdefault(module, []).append((tenant, seconds, events))
    return by_module


def _answer(future: concurrent.futures.Future[Response], timeout: float) -> Response:
    try:
        return future.result(timeout=timeout + 5.0)
    except Exception as exc:  # the sender never raises for a request; this is its own fault
        return Response(None, attempts.summarize_error(exc), None, 0.0)


def _when_all_done(
    futures: list[concurrent.futures.Future[Response]], then: Callable[[], None]
) -> None:
    left = [len(futures)]
    lock = threading.Lock()

    def one(_: object) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then()

    for future in futures:
        future.add_done_callback(one)


def _reporter(run: Attempt, verdict: Verdict) -> Callable[[], None]:
    def report() -> None:
        row = run.event
        where = f"event_id={row.id} {row.target_module}/{row.event_type}"
        if verdict.error is None:
            lag = (row.processed_at - row.created_at).total_seconds() if row.processed_at else 0.0
            metrics.observe_processed(row.target_module, row.event_type, 0.0, lag)
            log.info("%s delivered to its endpoints (attempt %d)", where, run.number)
        elif verdict.waiting:
            log.info("%s waits for a disabled endpoint", where)
        else:
            metrics.observe_failed(
                row.target_module, row.event_type, None, retried=verdict.delay is not None
            )
            log.warning("%s attempt %d failed: %s", where, run.number, verdict.error)

    return report
