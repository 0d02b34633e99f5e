"""A worker's heartbeat: its main process records, every EVENTBUS_WORKER_HEARTBEAT_SECONDS,
which modules it serves (:mod:`bus.storage.heartbeat_store`), so the relay knows whose queues are
read."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from bus.runtime import Runtime
from bus.storage import heartbeat_store
from bus.storage.db import transaction

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread beating for ``modules`` as ``worker`` until :meth:`stop`.

    A failed beat (the database down) is logged once per outage and tried again at the next
    interval; the worker itself goes on. Stopping deletes the worker's rows, so a module whose
    last worker stopped cleanly is seen as unserved at once rather than a few beats later.
    """

    def __init__(self, runtime: Runtime, modules: Sequence[str], worker: str) -> None:
        self._runtime = runtime
        self._modules = list(modules)
        self._worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eventbus-heartbeat", daemon=True)
        self._failing = False

    def start(self) -> None:
        self.beat()  # before the first message: a relay may ask right away
        self._thread.start()

    def beat(self) -> None:
        settings = self._runtime.settings
        try:
            with transaction(self._runtime.sessions) as session:
                heartbeat_store.beat(
                    session, settings.queue_prefix, self._modules, self._worker, datetime.now(UTC)
                )
        except Exception as exc:
            if not self._failing:
                log.warning("heartbeat not recorded (will retry): %s: %s", type(exc).__name__, exc)
            self._failing = True
            return
        if self._failing:
            log.info("heartbeat recorded again")
        self._failing = False

    def _run(self) -> None:
        while not self._stop.wait(self._runtime.settings.worker_heartbeat_seconds):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            with transaction(self._runtime.sessions) as session:
                heartbeat_store.forget(session, self._runtime.settings.queue_prefix, self._worker)
        except Exception as exc:
            log.warning("heartbeat rows not removed: %s: %s", type(exc).__name__, exc)
