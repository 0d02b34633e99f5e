"""Running Celery workers for the bus: a worker program, or one embedded in a thread."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from celery import signals
from celery.worker import state as worker_state

from bus.broker.queues import queue_name
from bus.observability import metrics, tracing
from bus.runtime import Runtime
from workers.heartbeat import Heartbeat
from workers.intake import CONSUMER
from workers.registry import Registry, registry
from workers.tasks import default_worker_name, install
from workers.waker import Waker

log = logging.getLogger(__name__)

WORKER_SERVICE = "eventbus-worker"
"""The service name of a worker's spans unless OTEL_SERVICE_NAME names one."""


class NoModules(RuntimeError):
    """A worker was asked to start with no module to serve."""


def resolve_modules(requested: Sequence[str] | None, handlers: Registry = registry) -> list[str]:
    """The modules a worker serves: those asked for, else every one with a handler."""
    modules = [m for m in (requested or []) if m] or handlers.modules()
    if not modules:
        raise NoModules(
            "no handlers are registered: set EVENTBUS_HANDLERS (or install a package with "
            "an 'eventbus.handlers' entry point), or pass --modules"
        )
    return modules


def _options(runtime: Runtime, modules: Sequence[str]) -> dict[str, Any]:
    return {
        "queues": [queue_name(m, runtime.settings.queue_prefix) for m in modules],
        "hostname": default_worker_name(),
        # Neither syncs state with other workers: it only delays the start.
        "without_mingle": True,
        "without_gossip": True,
        # Refuses, before anything runs, every message that is not a well-formed bus task.
        "consumer_cls": CONSUMER,
    }


def serve_metrics(port: int) -> Callable[[], None]:
    """Serve Prometheus ``/metrics`` on ``0.0.0.0:port`` from the worker's main process, summing
    every pool process's samples (multiprocess mode under prefork); returns how to stop it.

    It reads only the samples files, never the database, so it answers while the database is
    down: the worker's liveness probe relies on it. Port 0 serves nothing.
    """
    if not port:
        return lambda: None
    stop = metrics.serve(port)
    signals.worker_process_shutdown.connect(_forget_pool_process, weak=False)
    return stop


def _forget_pool_process(pid: int | None = None, **_: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())


def start_tracing(runtime: Runtime, pool: str) -> None:
    """With tracing on, a tracer provider in each process that runs handlers. A prefork pool's
    children build their own as they start (``worker_process_init``: the provider's export
    thread would not survive the fork) and flush it as they exit (``worker_process_shutdown``:
    a child ends with ``os._exit``, which skips the SDK's exit hook); the other pools run
    handlers in this process."""
    if not runtime.settings.otel_enabled:
        return
    tracing.require()  # a missing extra fails here, not in every pool child
    if pool == "prefork":
        signals.worker_process_init.connect(_start_child_tracing, weak=False)
        signals.worker_process_shutdown.connect(tracing.shutdown, weak=False)
    else:
        tracing.setup(WORKER_SERVICE)


def _start_child_tracing(**_: Any) -> None:
    tracing.setup(WORKER_SERVICE)


def run_worker(
    runtime: Runtime,
    modules: Sequence[str],
    *,
    concurrency: int | None = None,
    pool: str = "prefork",
    loglevel: str = "INFO",
) -> int:
    """Run a worker on ``modules``' queues until it is told to stop; returns its exit code.

    SIGTERM is a warm shutdown (running handlers finish), as in ``celery worker``.
    """
    options = _options(runtime, modules)
    install(runtime, modules=modules, worker=options["hostname"])
    start_tracing(runtime, pool)
    for module in sorted(set(modules) - set(registry.modules())):
        log.warning("no handler is registered for %s: each of its events will fail", module)
    worker = runtime.celery.Worker(
        pool=pool,
        concurrency=concurrency,
        loglevel=loglevel,
        quiet=True,
        **options,
    )
    log.info(
        "eventbus worker for %s on %s (pool %s)",
        ", ".join(modules),
        ", ".join(options["queues"]),
        pool,
    )
    heartbeat = Heartbeat(runtime, modules, options["hostname"])
    heartbeat.start()
    waker = Waker(runtime, modules, options["hostname"])
    waker.start()
    try:
        worker.start()
    finally:
        waker.stop()
        heartbeat.stop()
    code: int = worker.exitcode or 0
    return code


class EmbeddedWorker:
    """A solo-pool worker in a thread of this process (``eventbus dev``).

    The solo pool runs one handler at a time in the consuming thread, which also keeps SQLite,
    whose claim cannot skip locked rows, from running one event twice at once.
    """

    def __init__(self, runtime: Runtime, modules: Sequence[str], loglevel: str = "INFO") -> None:
        options = _options(runtime, modules)
        self._hostname: str = options["hostname"]
        install(runtime, modules=modules, worker=self._hostname)
        self._app = runtime.celery
        self._ready = threading.Event()
        self._worker = runtime.celery.WorkController(
            pool="solo",
            concurrency=1,
            loglevel=loglevel,
            ready_callback=lambda *_: self._ready.set(),
            without_heartbeat=True,
            **options,
        )
        self._thread = threading.Thread(target=self._worker.start, name="worker", daemon=True)
        self._heartbeat = Heartbeat(runtime, modules, self._hostname)
        self._waker = Waker(runtime, modules, self._hostname)

    def start(self, timeout: float = 30.0) -> None:
        self._heartbeat.start()
        self._thread.start()
        self._waker.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the embedded worker did not start within {timeout:.0f}s")

    def stop(self, timeout: float = 30.0) -> None:
        """Warm stop: the handler running now finishes first."""
        worker_state.should_stop = 0
        # The in-memory transport's loop waits up to 2 s for a message before it looks at that
        # flag, and waits once more after seeing it: a control message ends each wait at once.
        for _ in range(2):
            self._app.control.broadcast("ping", destination=[self._hostname], reply=False)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the embedded worker did not stop within %.0fs", timeout)
        self._waker.stop()
        self._heartbeat.stop()
