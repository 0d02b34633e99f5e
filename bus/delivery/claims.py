"""A worker's claims on the in-flight set: what it runs next, chosen by the bus.

A worker woken for a module claims up to ``EVENTBUS_CLAIM_BATCH_SIZE`` ready events of it in
one statement (:func:`bus.storage.claim_store.claim`: fair across tenants, in order per entity
where the handlers ask, nothing of a paused module) and commits the claim before running any
handler. The claim lasts the task time limit and a margin; the run's own transaction also locks
each event's history row, so no other delivery runs it meanwhile. An outcome clears the claim
(the database's trigger, with the status change). A claim still stamped after its process died
is ended by the worker's main process (:func:`rescue`), and the next claim of that event says
:attr:`~bus.storage.claim_store.Claim.lost`: its attempt is then counted before it runs, so a
handler that kills its process stops after ``EVENTBUS_RETRY_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from bus.delivery import fairness
from bus.delivery.attempts import INTERRUPTED_MESSAGE
from bus.events.rules import utcnow
from bus.observability import metrics
from bus.runtime import Runtime
from bus.storage import claim_store, heartbeat_store
from bus.storage.claim_store import Claim, Order
from bus.storage.db import transaction
from bus.uow import UnitOfWork

log = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 30.0
USAGE_FLUSH_SECONDS = 0.5
BATCH_TARGET_SECONDS = 0.1
"""How long a claim's batch should take at most: what an event of another tenant, first in the
next claim, waits behind (besides its own batch)."""
CHILD_DIED = "WorkerLostError: the worker's pool process died during this attempt"
WORKER_GONE = INTERRUPTED_MESSAGE
"""A worker whose heartbeat stopped: nothing says how its processes ended."""

__all__ = ["Claim", "Claimer", "Order"]


class Claimer:
    """Claims for one worker node (``worker``: its Celery node name, as it heartbeats)."""

    def __init__(self, runtime: Runtime, worker: str) -> None:
        settings = runtime.settings
        self.worker = worker
        self._runtime = runtime
        self._size = settings.claim_batch_size
        self._lease = timedelta(seconds=settings.task_time_limit_seconds + LEASE_MARGIN_SECONDS)
        self._weights = fairness.parse_weights(settings.tenant_weights)
        self._usage: dict[tuple[str, uuid.UUID], list[float]] = {}
        # The batches' thread and the webhook recorder's both add usage.
        self._usage_lock = threading.Lock()
        self._per_event: dict[str, float] = {}
        self._flushed = time.monotonic()

    def size(self, module: str, ordered: bool = False) -> int:
        """How many events of ``module`` to claim at most: the configured batch size, or fewer
        when a full claim's batch took longer than :data:`BATCH_TARGET_SECONDS` (slow handlers,
        or a busy machine), so a tenant whose event comes first in the next claim waits for
        one short batch, not a long one. Not for a module with ordered handlers: its claim's
        fixed cost (the order check over its window, 30-50 ms on a big backlog) counted per
        event shrank its claims until it ran at 0.15 x unordered (make bench)."""
        per_event = self._per_event.get(module)
        if per_event is None or ordered:
            return self._size
        return max(1, min(self._size, int(BATCH_TARGET_SECONDS / per_event)))

    def ran(self, module: str, claimed: int, limit: int, seconds: float) -> None:
        """A claim of ``claimed`` events (of at most ``limit``) was run in ``seconds``. Only
        full claims say what an event costs in a batch: a short one is mostly fixed costs."""
        if claimed < limit or claimed == 0:
            return
        sample = seconds / claimed
        before = self._per_event.get(module)
        self._per_event[module] = sample if before is None else before + 0.3 * (sample - before)

    def until(self, now: datetime) -> datetime:
        return now + self._lease

    def claim(
        self,
        uow: UnitOfWork,
        module: str,
        order: Order,
        limit: int,
        skip: Collection[uuid.UUID] = (),
    ) -> list[Claim]:
        """Up to ``limit`` of ``module``'s ready events for this process, none of the tenants
        in ``skip`` (whose webhook requests fill their share of it); the caller commits."""
        now = utcnow()
        return claim_store.claim(
            uow.session,
            module,
            order,
            weights=self._weights,
            decay=fairness.DECAY,
            cost=fairness.DEFAULT_COST,
            now=now,
            until=self.until(now),
            worker=self.worker,
            pid=os.getpid(),
            limit=limit,
            skip=skip,
        )

    def restamp(self, uow: UnitOfWork, module: str, event_ids: Collection[uuid.UUID]) -> None:
        """Claim again events whose status change (a count in advance) cleared the claim."""
        until = self.until(utcnow())
        claim_store.stamp(uow.session, module, event_ids, self.worker, os.getpid(), until)

    def release(self, uow: UnitOfWork, event_ids: Collection[uuid.UUID]) -> None:
        """Give back claims not run (none of their runs was lost)."""
        claim_store.release(uow.session, event_ids, self.worker)

    def give_back_lost(self, uow: UnitOfWork, lost: Collection[tuple[uuid.UUID, str]]) -> None:
        """Give back claims of events whose run was lost, not run now: still marked lost (with
        each one's reason), so the claim that takes them next counts that run."""
        claim_store.end(uow.session, lost, self.worker, utcnow())

    def hold_while_running(self, uow: UnitOfWork, event_id: uuid.UUID) -> None:
        """Hold an ordered event's key while it runs: its mark (its last attempt, counted in
        advance) says failed with no retry to come, which would let the key go."""
        claim_store.set_hold(uow.session, [(event_id, claim_store.HOLD_BLOCK)])

    def release_mine(self) -> None:
        """Give back every claim of this process (a delivery that ended with claims
        outstanding: the database failed under it, so no run died)."""
        with transaction(self._runtime.sessions) as session:
            claim_store.release_pid(session, self.worker, os.getpid())

    def record(
        self,
        uow: UnitOfWork,
        module: str,
        used: Sequence[tuple[uuid.UUID, float, float]],
        holds: Collection[tuple[uuid.UUID, str]],
    ) -> None:
        """A batch's handler time per tenant (kept here, written by :meth:`flush_usage`), and
        the keys its final failures hold (in the batch's transaction)."""
        with self._usage_lock:
            for tenant, seconds, events in used:
                total = self._usage.setdefault((module, tenant), [0.0, 0.0])
                total[0] += seconds
                total[1] += events
        if holds:
            claim_store.set_hold(uow.session, holds)

    def flush_usage(self, force: bool = False) -> None:
        """Write the usage gathered since the last flush, at most every
        :data:`USAGE_FLUSH_SECONDS`, in a transaction of its own: a tenant's usage row is one
        row every worker of the module updates, and held in each batch's transaction it made
        their commits wait on each other. Fair shares need it within a second, not exactly."""
        now = time.monotonic()
        if not self._usage or (not force and now < self._flushed + USAGE_FLUSH_SECONDS):
            return
        with self._usage_lock:
            gathered, self._usage = self._usage, {}
        self._flushed = now
        at = utcnow()
        by_module: dict[str, list[tuple[uuid.UUID, float, float]]] = {}
        for (module, tenant), (seconds, events) in sorted(gathered.items(), key=_usage_key):
            by_module.setdefault(module, []).append((tenant, seconds, events))
        with transaction(self._runtime.sessions) as session:
            for module, used in by_module.items():
                claim_store.add_usage(session, module, used, at, fairness.DECAY)


def rescue(
    runtime: Runtime,
    worker: str,
    modules: Collection[str],
    *,
    dead: Collection[int] | None = None,
    reason: str = CHILD_DIED,
) -> list[str]:
    """End the claims of processes that died: this node's (``worker``) in ``dead`` (by default
    every one of its processes holding claims that is gone), and in ``modules`` those of nodes
    without a live heartbeat. Returns the modules whose events became claimable again (a
    wake-up is due)."""
    settings = runtime.settings
    now = utcnow()
    with transaction(runtime.sessions) as session:
        if dead is None:
            dead = [p for p in claim_store.claimed_pids(session, worker, now) if not alive(p)]
        ended: list[claim_store.Expired] = []
        if dead:
            ended += claim_store.expire(session, now, reason, worker=worker, pids=dead)
        since = heartbeat_store.live_since(now, settings.worker_heartbeat_seconds)
        live = heartbeat_store.live_workers(session, since) | {worker}
        ended += claim_store.expire(session, now, WORKER_GONE, unless_workers=live, modules=modules)
    for gone in ended:
        if gone.spent:
            # The run that died was its last attempt: it failed and gave up, counted here
            # (no claim will take it again to count it).
            metrics.observe_failed(gone.target_module, gone.event_type, None, retried=False)
            log.error("event_id=%s failed for good: its last attempt died: %s", gone.id, reason)
    expired = sorted({e.target_module for e in ended if not e.spent})
    if ended:
        log.warning("claims of dead worker processes ended: %s", ", ".join(expired) or "none")
    return expired


def dead_processes(runtime: Runtime, worker: str) -> list[int]:
    """This node's processes that hold claims and are gone."""
    with transaction(runtime.sessions) as session:
        pids = claim_store.claimed_pids(session, worker, utcnow())
    return [pid for pid in pids if not alive(pid)]


def ready(
    runtime: Runtime, modules: Collection[str], now: datetime | None = None, grace: float = 0.0
) -> dict[str, uuid.UUID]:
    """Modules with an event a claim could take now, due for ``grace`` seconds at least (one
    id of each, as a wake-up's hint)."""
    with transaction(runtime.sessions) as session:
        return claim_store.ready_modules(session, modules, now or utcnow(), grace)


def _usage_key(item: tuple[tuple[str, uuid.UUID], list[float]]) -> tuple[str, str]:
    """Rows written in one order by every worker: no two flushes wait on each other in turn."""
    (module, tenant), _ = item
    return module, str(tenant)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
