"""The maintenance process: runs each chore on its own interval, so one failing chore
never stops another (its failure is logged and counted per chore, and it alone backs off).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from bus.broker.inspector import BrokerInspector
from bus.events.rules import utcnow
from bus.maintenance.purges import purge_attempts, purge_idempotency_keys
from bus.maintenance.resend import _run_once, _unserved
from bus.runtime import Bus
from bus.storage import migrate
from bus.storage.count_store import fold_counts, fold_outcome_minutes

log = logging.getLogger(__name__)


_MAX_ERROR_BACKOFF_SECONDS = 30.0


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
