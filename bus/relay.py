"""The relay: the outbox's other half, sending events that should be on a queue but may not be.

Publishing sends right after the commit; the relay covers every way that send can go missing
(the broker down, the process killed in between, a broker that lost its queues) and sends
failed events whose retry is due but whose retry message was lost. Several relays may run at
once: each takes its batch with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from bus import heartbeats, history, idempotency, migrate, repository, tracing
from bus.broker import BrokerInspector
from bus.db import transaction
from bus.dispatch import Dispatch
from bus.queues import queue_name
from bus.rules import utcnow
from bus.runtime import Bus

log = logging.getLogger(__name__)

_MAX_ERROR_BACKOFF_SECONDS = 30.0
LEASE_EXPIRED_MESSAGE = (
    "AttemptInterrupted: no outcome within the relay's lease (EVENTBUS_RELAY_LEASE_SECONDS)"
)


def _lost(resent: bool) -> str | None:
    """A re-send after the lease is marked as following a delivery that may have died.

    Its message may be merely waiting in a queue, but it may also have died with a whole worker
    (SIGKILL, OOM, a handler that crashes the process): nothing else reports that, and a
    re-send that ran uncounted would let such a handler crash a worker again and again. Marked,
    its attempt is counted before the handler runs and the outcome replaces the mark, so it
    costs one commit and never counts a run twice.
    """
    return LEASE_EXPIRED_MESSAGE if resent else None


def run_once(bus: Bus, now: datetime | None = None, broker: BrokerInspector | None = None) -> int:
    """Send one bounded batch of due events; returns how many were sent.

    The batch is stamped and committed before anything is sent, so a relay that dies after
    sending leaves stamps, not duplicates, behind; sends that fail are unstamped again.
    """
    return _run_once(bus, now or utcnow(), broker)[0]


def _run_once(bus: Bus, now: datetime, broker: BrokerInspector | None) -> tuple[int, list[str]]:
    """:func:`run_once`, also returning the modules whose re-sends it held back."""
    settings = bus.settings
    lease = timedelta(seconds=settings.relay_lease_seconds)
    with transaction(bus.sessions) as session:
        held = _held_modules(bus, session, now, lease, broker)
        rows = repository.take_due_for_dispatch(
            session, now, lease, settings.relay_batch_size, hold=held
        )
    if not rows:
        return 0, held
    dispatches = [
        Dispatch(row.id, row.target_module, request_id=row.request_id, lost=_lost(row.resent))
        for row in rows
    ]
    if settings.otel_enabled:
        # The request a re-sent event came from is not stored: its sends start a trace of
        # their own, under this span (README, "Tracing").
        with tracing.tracer().start_as_current_span(
            "eventbus.relay", attributes={"eventbus.event_count": len(rows)}
        ):
            failed = bus.dispatcher.send(dispatches)
    else:
        failed = bus.dispatcher.send(dispatches)
    if failed:
        log.warning("relay: %d of %d sends failed; trying again later", len(failed), len(rows))
    return len(rows) - len(failed), held


def fold_counts(bus: Bus) -> int:
    """Fold the count changes the writes appended (``repository.fold_counts``): the relay does
    it each pass, so the list's exact ``total`` reads a few rows per tenant."""
    with transaction(bus.sessions) as session:
        return repository.fold_counts(session)


MINUTES_KEPT = timedelta(hours=2)
"""The chart shows the last hour; a second one is kept for late writers and clocks."""


def fold_outcome_minutes(bus: Bus, now: datetime | None = None) -> int:
    """Fold each closed minute of handler outcomes into a row per key and purge the minutes
    the chart no longer shows (``repository.fold_outcome_minutes``): the relay does it once a
    minute, when a minute closes, so the stats' series reads about a row per minute and key."""
    now = now or utcnow()
    closed = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    with transaction(bus.sessions) as session:
        return repository.fold_outcome_minutes(session, closed, now - MINUTES_KEPT)


def purge_attempts(bus: Bus, now: datetime | None = None) -> int:
    """Delete a bounded batch of attempt history entries older than
    ``EVENTBUS_ATTEMPTS_RETENTION_DAYS`` (``bus.history.purge``): the relay does it each pass,
    so the table holds about that many days of attempts."""
    keep = timedelta(days=bus.settings.attempts_retention_days)
    with transaction(bus.sessions) as session:
        return history.purge(session, (now or utcnow()) - keep)


def purge_idempotency_keys(bus: Bus, now: datetime | None = None) -> int:
    """Delete a bounded batch of expired idempotency keys (``bus.idempotency.purge_expired``):
    the relay does it each pass, so the table holds about one TTL of keys."""
    with transaction(bus.sessions) as session:
        return idempotency.purge_expired(session, now or utcnow())


def _held_modules(
    bus: Bus, session: Session, now: datetime, lease: timedelta, broker: BrokerInspector | None
) -> list[str]:
    """Modules whose expired events must not be sent again now: their earlier copy may still
    be waiting on the queue.

    A lease running out means an outcome is overdue, not that the copy is gone: it may be
    waiting behind others, or for a worker that does not run (a module nobody consumes), and
    a re-send per lease would stack copies without end (144 a day at the default lease, on a
    Redis that cannot evict them). Where queue lengths can be read (Redis), expired events are
    sent again only when their queue is empty, where no copy can be waiting (the broker lost
    it, or a worker that died took it): at most one copy waits, whoever consumes. Where they
    cannot (RabbitMQ), only while a worker of the module heartbeats (:mod:`bus.heartbeats`),
    which will drain what waits. Events never sent are sent regardless.
    """
    settings = bus.settings
    candidates = heartbeats.modules_with_expired_leases(session, now, lease)
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
    since = heartbeats.live_since(now, settings.worker_heartbeat_seconds)
    live = heartbeats.live_modules(session, settings.queue_prefix, since)
    return [m for m in candidates if m not in live]


def _unserved(bus: Bus, modules: list[str]) -> list[str]:
    """Those of ``modules`` without a live worker, for the relay's log."""
    settings = bus.settings
    since = heartbeats.live_since(utcnow(), settings.worker_heartbeat_seconds)
    with transaction(bus.sessions) as session:
        live = heartbeats.live_modules(session, settings.queue_prefix, since)
    return [m for m in modules if m not in live]


class Relay:
    """Runs :func:`run_once` every ``EVENTBUS_RELAY_INTERVAL_SECONDS`` until stopped.

    A full batch is followed at once by the next; errors (database or broker down) back off
    up to 30 s so an outage is logged, not flooded.
    """

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._stop = threading.Event()
        self._broker = BrokerInspector(bus.settings.broker_url)
        self._held: list[str] = []
        self._minute_folded: datetime | None = None

    def _fold_minutes(self) -> None:
        """Fold the outcome buckets once per minute: only a closed minute has anything to fold,
        and a pass runs several times a second."""
        minute = utcnow().replace(second=0, microsecond=0)
        if minute != self._minute_folded:
            fold_outcome_minutes(self._bus)
            self._minute_folded = minute

    def stop(self) -> None:
        """Ask the loop to end after the batch in progress (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Loop until :meth:`stop`."""
        settings = self._bus.settings
        errors = 0
        log.info(
            "relay started: every %.2fs, lease %.0fs, batches of %d",
            settings.relay_interval_seconds,
            settings.relay_lease_seconds,
            settings.relay_batch_size,
        )
        # Before `eventbus migrate` has run, every pass would fail the same way: say it once.
        migrate.wait_until_current(self._bus.engine, self._stop)
        while not self._stop.is_set():
            try:
                sent, held = _run_once(self._bus, utcnow(), self._broker)
                self._report_held(held)
                fold_counts(self._bus)
                self._fold_minutes()
                purge_attempts(self._bus)
                purge_idempotency_keys(self._bus)
            except Exception:
                errors += 1
                pause = min(_MAX_ERROR_BACKOFF_SECONDS, settings.relay_interval_seconds * 2**errors)
                log.exception("relay pass failed; next in %.1fs", pause)
                self._stop.wait(pause)
                continue
            errors = 0
            if sent:
                log.info("relay sent %d events", sent)
            if sent < settings.relay_batch_size:
                self._stop.wait(settings.relay_interval_seconds)
        self._broker.close()
        log.info("relay stopped")

    def _report_held(self, held: list[str]) -> None:
        """Say when the set of modules whose re-sends are held changes (not every pass)."""
        if held == self._held:
            return
        self._held = held
        if not held:
            log.info("relay: no overdue event is held back")
            return
        unserved = _unserved(self._bus, held)
        log.warning(
            "relay: overdue events of %s not sent again while a copy may wait on their queue%s",
            ", ".join(held),
            f"; no live worker for {', '.join(unserved)}" if unserved else "",
        )
