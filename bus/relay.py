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

from bus import repository
from bus.db import transaction
from bus.dispatch import Dispatch
from bus.runtime import Bus
from bus.service import utcnow

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


def run_once(bus: Bus, now: datetime | None = None) -> int:
    """Send one bounded batch of due events; returns how many were sent.

    The batch is stamped and committed before anything is sent, so a relay that dies after
    sending leaves stamps, not duplicates, behind; sends that fail are unstamped again.
    """
    settings = bus.settings
    with transaction(bus.sessions) as session:
        rows = repository.take_due_for_dispatch(
            session,
            now or utcnow(),
            timedelta(seconds=settings.relay_lease_seconds),
            settings.relay_batch_size,
        )
    if not rows:
        return 0
    dispatches = [
        Dispatch(row.id, row.target_module, request_id=row.request_id, lost=_lost(row.resent))
        for row in rows
    ]
    failed = bus.dispatcher.send(dispatches)
    if failed:
        log.warning("relay: %d of %d sends failed; trying again later", len(failed), len(rows))
    return len(rows) - len(failed)


class Relay:
    """Runs :func:`run_once` every ``EVENTBUS_RELAY_INTERVAL_SECONDS`` until stopped.

    A full batch is followed at once by the next; errors (database or broker down) back off
    up to 30 s so an outage is logged, not flooded.
    """

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the loop to end after the batch in progress (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

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
        while not self._stop.is_set():
            try:
                sent = run_once(self._bus)
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
        log.info("relay stopped")
