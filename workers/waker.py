"""A worker's poll: what no message woke it for.

Messages are wake-ups and may be lost, skipped (enough wait already) or never sent (a retry
coming due sends none). The worker's main process therefore looks, every
``EVENTBUS_WORKER_POLL_SECONDS``: it ends the claims of processes that died
(:func:`bus.delivery.claims.rescue`), then sends one wake-up to each of its modules with an
event ready and free (:func:`bus.delivery.claims.ready`). A few indexed reads a second per
worker, whatever the traffic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from bus.delivery import claims
from bus.runtime import Runtime

log = logging.getLogger(__name__)


class Waker:
    """A daemon thread polling for ``modules`` of worker node ``worker`` until :meth:`stop`."""

    def __init__(self, runtime: Runtime, modules: Sequence[str], worker: str) -> None:
        self._runtime = runtime
        self._modules = list(modules)
        self._worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eventbus-waker", daemon=True)
        self._failing = False
        self._dead: set[int] = set()

    def start(self) -> None:
        self._thread.start()

    def poll(self) -> list[str]:
        """One look; returns the modules woken."""
        runtime = self._runtime
        try:
            # A process of this node found dead twice: its death was not reported (the report
            # ends its claims with its reason, and comes first).
            dead = claims.dead_processes(runtime, self._worker)
            gone = [pid for pid in dead if pid in self._dead]
            self._dead = set(dead)
            rescued = claims.rescue(runtime, self._worker, self._modules, dead=gone)
            # Due for a poll interval at least: a publish's (or a retry's) own wake-up comes
            # first; what rescue freed, at once.
            grace = runtime.settings.worker_poll_seconds
            ready = claims.ready(runtime, self._modules, grace=grace)
            if rescued:
                ready.update(claims.ready(runtime, rescued))
            for module, hint in ready.items():
                runtime.dispatcher.wake(module, hint)
        except Exception as exc:
            if not self._failing:
                log.warning("poll failed (will retry): %s: %s", type(exc).__name__, exc)
            self._failing = True
            return []
        if self._failing:
            log.info("poll works again")
        self._failing = False
        return sorted(ready)

    def _run(self) -> None:
        while not self._stop.wait(self._runtime.settings.worker_poll_seconds):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
