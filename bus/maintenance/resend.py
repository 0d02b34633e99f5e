"""Re-send: the outbox's other half, sending events that should be on a queue but may not be.

Publishing sends right after the commit; this chore covers every way that send can go missing
(the broker down, the process killed in between, a broker that lost its queues) and sends
failed events whose retry is due but whose retry message was lost. Several maintenance
processes may run at once: each takes its batch with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bus.broker.dispatch import Dispatch
from bus.broker.inspector import BrokerInspector
from bus.broker.queues import queue_name
from bus.events.rules import utcnow
from bus.maintenance.chore import Chore
from bus.observability import tracing
from bus.runtime import Runtime
from bus.storage import event_store, heartbeat_store
from bus.storage.db import transaction

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


LEASE_EXPIRED_MESSAGE = (
    "AttemptInterrupted: no outcome within the relay's lease (EVENTBUS_RELAY_LEASE_SECONDS)"
)


def _interruption(resent: bool) -> str | None:
    """A re-send after the lease is marked as following a delivery that may have died.

    Its message may be merely waiting in a queue, but it may also have died with a whole worker
    (SIGKILL, OOM, a handler that crashes the process): nothing else reports that, and a
    re-send that ran uncounted would let such a handler crash a worker again and again. Marked,
    its attempt is counted before the handler runs and the outcome replaces the mark, so it
    costs one commit and never counts a run twice.
    """
    return LEASE_EXPIRED_MESSAGE if resent else None


def run_once(
    runtime: Runtime, now: datetime | None = None, broker: BrokerInspector | None = None
) -> int:
    """Send one bounded batch of due events; returns how many were sent.

    The batch is stamped and committed before anything is sent, so a relay that dies after
    sending leaves stamps, not duplicates, behind; sends that fail are unstamped again.
    """
    return _run_once(runtime, now or utcnow(), broker)[0]


def _run_once(
    runtime: Runtime, now: datetime, broker: BrokerInspector | None
) -> tuple[int, list[str]]:
    """:func:`run_once`, also returning the modules whose re-sends it held back."""
    settings = runtime.settings
    lease = timedelta(seconds=settings.relay_lease_seconds)
    with transaction(runtime.sessions) as session:
        held = _held_modules(runtime, session, now, lease, broker)
        rows = event_store.take_due_for_dispatch(
            session, now, lease, settings.relay_batch_size, hold=held
        )
    if not rows:
        return 0, held
    dispatches = [
        Dispatch(
            row.id,
            row.target_module,
            request_id=row.request_id,
            interrupted=_interruption(row.resent),
        )
        for row in rows
    ]
    if settings.otel_enabled:
        # The request a re-sent event came from is not stored: its sends start a trace of
        # their own, under this span (README, "Tracing").
        with tracing.tracer().start_as_current_span(
            "eventbus.relay", attributes={"eventbus.event_count": len(rows)}
        ):
            failed = runtime.dispatcher.send(dispatches)
    else:
        failed = runtime.dispatcher.send(dispatches)
    if failed:
        log.warning("relay: %d of %d sends failed; trying again later", len(failed), len(rows))
    return len(rows) - len(failed), held


def _held_modules(
    runtime: Runtime,
    session: Session,
    now: datetime,
    lease: timedelta,
    broker: BrokerInspector | None,
) -> list[str]:
    """Modules whose expired events must not be sent again now: their earlier copy may still
    be waiting on the queue.

    A lease running out means an outcome is overdue, not that the copy is gone: it may be
    waiting behind others, or for a worker that does not run (a module nobody consumes), and
    a re-send per lease would stack copies without end (144 a day at the default lease, on a
    Redis that cannot evict them). Where queue lengths can be read (Redis), expired events are
    sent again only when their queue is empty, where no copy can be waiting (the broker lost
    it, or a worker that died took it): at most one copy waits, whoever consumes. Where they
    cannot (RabbitMQ), only while a worker of the module heartbeats
    (:mod:`bus.storage.heartbeat_store`), which will drain what waits. Events never sent are
    sent regardless.
    """
    settings = runtime.settings
    candidates = heartbeat_store.modules_with_expired_leases(session, now, lease)
    if not candidates:
        return []
    inspector = broker or BrokerInspector(settings.broker_url)
    queues = [queue_name(m, settings.queue_prefix) for m in candidates]
    try:
        depths = inspector.depths(queues)
    except Exception as exc:
        log.warning("relay: queue lengths unknown (%s): re-sending only where workers live", exc)
        depths = None
    finally:
        if broker is None:
            inspector.close()
    if depths is not None:
        return [m for m, q in zip(candidates, queues, strict=True) if depths.get(q, 1) != 0]
    since = heartbeat_store.live_since(now, settings.worker_heartbeat_seconds)
    live = heartbeat_store.live_modules(session, settings.queue_prefix, since)
    return [m for m in candidates if m not in live]


def _unserved(runtime: Runtime, modules: list[str]) -> list[str]:
    """Those of ``modules`` without a live worker, for the log."""
    settings = runtime.settings
    since = heartbeat_store.live_since(utcnow(), settings.worker_heartbeat_seconds)
    with transaction(runtime.sessions) as session:
        live = heartbeat_store.live_modules(session, settings.queue_prefix, since)
    return [m for m in modules if m not in live]


class _Resender:
    """The re-send chore's state: one broker connection for queue lengths, and the modules
    held back last time (said in the log when they change, not every pass)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._broker = BrokerInspector(runtime.settings.broker_url)
        self._held: list[str] = []

    def run(self) -> int:
        sent, held = _run_once(self._runtime, utcnow(), self._broker)
        self._report_held(held)
        if sent:
            log.info("relay sent %d events", sent)
        return sent

    def close(self) -> None:
        self._broker.close()

    def _report_held(self, held: list[str]) -> None:
        if held == self._held:
            return
        self._held = held
        if not held:
            log.info("relay: no overdue event is held back")
            return
        unserved = _unserved(self._runtime, held)
        log.warning(
            "relay: overdue events of %s not sent again while a copy may wait on their queue%s",
            ", ".join(held),
            f"; no live worker for {', '.join(unserved)}" if unserved else "",
        )


def chore(runtime: Runtime) -> Chore:
    """Re-send every ``EVENTBUS_RELAY_INTERVAL_SECONDS``; a full batch is followed at once."""
    resender = _Resender(runtime)
    return Chore(
        "resend",
        runtime.settings.relay_interval_seconds,
        resender.run,
        batch=runtime.settings.relay_batch_size,
        close=resender.close,
    )
