"""The maintenance process: runs each chore on its own interval, so one failing chore never
stops another (its failure is logged and counted per chore, and it alone backs off)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from bus.maintenance import counts, outcomes, purges, resend, retention, vacuum
from bus.maintenance.chore import Chore
from bus.observability import metrics
from bus.runtime import Runtime

log = logging.getLogger(__name__)

MAX_ERROR_BACKOFF_SECONDS = 30.0
"""A failing chore tries again after its interval doubled per failure in a row, up to this:
an outage is logged, not flooded."""


def default_chores(runtime: Runtime) -> list[Chore]:
    """Every chore of the bus, in the order one pass runs them."""
    return [
        resend.chore(runtime),
        counts.chore(runtime),
        outcomes.chore(runtime),
        *purges.chores(runtime),
        *retention.chores(runtime),
        vacuum.chore(runtime),
    ]


class Maintenance:
    """Runs its chores until stopped: each when it is due, in one thread."""

    def __init__(self, runtime: Runtime, chores: Sequence[Chore] | None = None) -> None:
        self._runtime = runtime
        self._chores = list(chores) if chores is not None else default_chores(runtime)
        self._stop = threading.Event()
        self._due = {chore.name: 0.0 for chore in self._chores}
        self._failures = {chore.name: 0 for chore in self._chores}

    def stop(self) -> None:
        """Ask the loop to end after the chore in progress (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Loop until :meth:`stop`."""
        settings = self._runtime.settings
        log.info(
            "relay started: every %.2fs; chores: %s",
            settings.relay_interval_seconds,
            ", ".join(chore.name for chore in self._chores),
        )
        try:
            while not self._stop.is_set():
                for chore in self._chores:
                    if self._due[chore.name] <= time.monotonic() and not self._stop.is_set():
                        self._run(chore)
                self._stop.wait(max(0.0, min(self._due.values()) - time.monotonic()))
        finally:
            for chore in self._chores:
                chore.close()
        log.info("relay stopped")

    def _run(self, chore: Chore) -> None:
        """One pass of ``chore``; whatever it raises stays with it."""
        try:
            done = chore.run()
        except Exception:
            failures = self._failures[chore.name] = self._failures[chore.name] + 1
            metrics.count_maintenance_failure(chore.name)
            pause = min(MAX_ERROR_BACKOFF_SECONDS, chore.interval * 2**failures)
            log.exception("maintenance: %s failed; next try in %.1fs", chore.name, pause)
            self._due[chore.name] = time.monotonic() + pause
            return
        self._failures[chore.name] = 0
        again = chore.batch is not None and done >= chore.batch
        self._due[chore.name] = time.monotonic() + (0.0 if again else chore.interval)
