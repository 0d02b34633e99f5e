"""Prometheus metrics, correct under several uvicorn workers and Celery's prefork pool.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the CLI sets it before anything imports
prometheus_client, see :mod:`bus.observability.multiprocess`) every process writes its samples to
files
there, and a scrape sums them. Backlog figures (queue depth, oldest pending age) are read fresh
at scrape time instead, by the API only: a worker's endpoint never waits on the database.

What the counters count (the alert rules in deploy/prometheus rely on it):

* published: events whose INSERT committed (counted after the commit, by the API);
* processed: attempts whose handler returned and whose processed status committed;
* failed: attempts that failed, retried or not (a handler that raised, a lost pool child, an
  event without a handler);
* retried: retries scheduled after a failed attempt, so failed - retried = events that
  exhausted their attempts;
* broker_messages_rejected: messages refused as not the bus's task (:mod:`bus.broker.deadletter`).

``target_module`` and ``event_type`` are chosen by publishers, so their values are bounded
(:class:`LabelBudget`): handled ones, then the first EVENTBUS_METRICS_MAX_MODULES /
EVENTBUS_METRICS_MAX_EVENT_TYPES seen by each process; the rest are counted as ``other``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
EVENT_LABELS = ("target_module", "event_type")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

PUBLISHED = Counter("eventbus_events_published", "Events published (committed)", EVENT_LABELS)
PROCESSED = Counter("eventbus_events_processed", "Events a handler processed", EVENT_LABELS)
FAILED = Counter("eventbus_events_failed", "Handler attempts that failed", EVENT_LABELS)
RETRIED = Counter("eventbus_events_retried", "Retries scheduled after a failure", EVENT_LABELS)
HANDLER_SECONDS = Histogram(
    "eventbus_handler_duration_seconds",
    "Time in a handler, per attempt",
    EVENT_LABELS,
    buckets=_LATENCY_BUCKETS,
)
LAG_SECONDS = Histogram(
    "eventbus_end_to_end_lag_seconds",
    "From created_at to processed_at",
    ("target_module",),
    buckets=_LAG_BUCKETS,
)
WEBHOOK_REQUESTS = Counter(
    "eventbus_webhook_requests",
    "Webhook requests by answer: 2xx, 3xx, 4xx, 5xx, or none (timeout, connection, refused)",
    ("target_module", "answer"),
)
WEBHOOK_SECONDS = Histogram(
    "eventbus_webhook_request_duration_seconds",
    "A webhook request's time, connect to answer",
    ("target_module",),
    buckets=_LATENCY_BUCKETS,
)
HTTP_SECONDS = Histogram(
    "eventbus_http_request_duration_seconds",
    "HTTP request latency",
    ("method", "route", "status"),
    buckets=_LATENCY_BUCKETS,
)
BROKER_REJECTED = Counter(
    "eventbus_broker_messages_rejected",
    "Broker messages refused as not a well-formed bus task (kept on <queue>.dead)",
    ("queue",),
)
MAINTENANCE_FAILURES = Counter(
    "eventbus_maintenance_failures",
    "Maintenance chore passes that raised (each chore backs off alone)",
    ("chore",),
)
RETENTION_DROPPED = Counter(
    "eventbus_retention_dropped_events",
    "Events that left the history past EVENTBUS_RETENTION_DAYS (dropped with their partition)",
)

OTHER = "other"
"""The label value that stands for every value past a label's budget."""


class LabelBudget:
    """Bounds one label's values: those allowed up front (a registered handler's) and the first
    ``limit`` others seen by this process; the rest are reported as :data:`OTHER`.

    A label's values are chosen by publishers; each new one is a new series in every process
    and every scrape, so an unbounded label grows ``/metrics`` (and Prometheus) without end.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._allowed: set[str] = set()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def allow(self, value: str) -> None:
        """Always report ``value`` as itself (outside the budget)."""
        self._allowed.add(value)

    def __call__(self, value: str) -> str:
        if value in self._allowed or value in self._seen:
            return value
        with self._lock:
            if self.limit is None:
                self.limit = _default_limit(self)
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


EVENT_TYPES = LabelBudget()
"""``event_type`` values: EVENTBUS_METRICS_MAX_EVENT_TYPES beyond the handled ones."""
MODULES = LabelBudget()
"""``target_module`` values: EVENTBUS_METRICS_MAX_MODULES beyond the handled ones."""


def _default_limit(budget: LabelBudget) -> int:
    from bus.settings import get_settings  # read on first use: tests and CLIs set it first

    settings = get_settings()
    return settings.metrics_max_modules if budget is MODULES else settings.metrics_max_event_types


def allow_labels(target_module: str, event_type: str | None = None) -> None:
    """A handler exists for this module (and event type): its labels are never folded."""
    MODULES.allow(target_module)
    if event_type is not None:
        EVENT_TYPES.allow(event_type)


def _labels(target_module: str, event_type: str) -> tuple[str, str]:
    return MODULES(target_module), EVENT_TYPES(event_type)


def count_broker_rejected(queue: str) -> None:
    """One broker message refused on ``queue`` (one of the worker's own queues, so bounded)."""
    BROKER_REJECTED.labels(queue).inc()


def count_retention_dropped(events: int) -> None:
    """Events that left the history past ``EVENTBUS_RETENTION_DAYS`` (a dropped partition's)."""
    RETENTION_DROPPED.inc(events)


def count_maintenance_failure(chore: str) -> None:
    """One pass of a maintenance chore failed (the chore names are the bus's own: bounded)."""
    MAINTENANCE_FAILURES.labels(chore).inc()


def count_published(target_module: str, event_type: str) -> None:
    """One event published; call it only once the INSERT has committed."""
    PUBLISHED.labels(*_labels(target_module, event_type)).inc()


def observe_processed(
    target_module: str, event_type: str, handler_seconds: float, lag_seconds: float
) -> None:
    """An attempt whose processed status committed: its handler time and the event's lag."""
    labels = _labels(target_module, event_type)
    PROCESSED.labels(*labels).inc()
    HANDLER_SECONDS.labels(*labels).observe(handler_seconds)
    LAG_SECONDS.labels(labels[0]).observe(max(0.0, lag_seconds))


def observe_failed(
    target_module: str, event_type: str, handler_seconds: float | None, *, retried: bool
) -> None:
    """A failed attempt whose failure committed; ``retried`` when another attempt is scheduled.

    ``handler_seconds`` is None when no handler ran to the end (none registered, process lost).
    """
    labels = _labels(target_module, event_type)
    FAILED.labels(*labels).inc()
    if retried:
        RETRIED.labels(*labels).inc()
    if handler_seconds is not None:
        HANDLER_SECONDS.labels(*labels).observe(handler_seconds)


def observe_webhook(target_module: str, status: int | None, seconds: float) -> None:
    """One webhook request answered ``status`` (None: no answer) after ``seconds``."""
    answer = "none" if status is None else f"{min(max(status // 100, 1), 5)}xx"
    module = MODULES(target_module)
    WEBHOOK_REQUESTS.labels(module, answer).inc()
    WEBHOOK_SECONDS.labels(module).observe(seconds)


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_SECONDS.labels(method, route, str(status)).observe(seconds)


@dataclass(frozen=True, slots=True)
class Backlog:
    """One module's backlog: messages on its queue, pending events and the oldest one's age."""

    target_module: str
    queue_depth: int | None
    pending: int
    oldest_pending_age_seconds: float
    held_keys: int = 0
    paused: bool = False


class BacklogCollector(Collector):
    """Gauges computed at scrape time from a callable (database and broker lookups).

    If the lookup fails the gauges are left out of that scrape (and the failure logged): the
    counters must still be served while the database is down.
    """

    def __init__(self, read: Callable[[], Iterable[Backlog]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "eventbus_queue_depth", "Messages waiting on a module's queue", labels=["target_module"]
        )
        age = GaugeMetricFamily(
            "eventbus_oldest_pending_age_seconds",
            "Age of the oldest pending event of a module (0 when none is pending)",
            labels=["target_module"],
        )
        pending = GaugeMetricFamily(
            "eventbus_pending_events", "Pending events of a module", labels=["target_module"]
        )
        held = GaugeMetricFamily(
            "eventbus_held_keys",
            "Entities whose events wait behind one that failed for good (ordered handlers)",
            labels=["target_module"],
        )
        paused = GaugeMetricFamily(
            "eventbus_module_paused",
            "1 while a module's delivery is paused",
            labels=["target_module"],
        )
        try:
            rows = list(self._read())
        except Exception as exc:
            log.warning("backlog gauges left out of this scrape: %s: %s", type(exc).__name__, exc)
            rows = []
        for row in _fold(rows):
            if row.queue_depth is not None:
                depth.add_metric([row.target_module], row.queue_depth)
            age.add_metric([row.target_module], row.oldest_pending_age_seconds)
            pending.add_metric([row.target_module], row.pending)
            held.add_metric([row.target_module], row.held_keys)
            paused.add_metric([row.target_module], int(row.paused))
        yield depth
        yield age
        yield pending
        yield held
        yield paused


def _fold(rows: Iterable[Backlog]) -> list[Backlog]:
    """Modules past the label budget summed into one ``other`` row (oldest age: the max)."""
    folded: dict[str, Backlog] = {}
    for row in rows:
        label = MODULES(row.target_module)
        seen = folded.get(label)
        if seen is None:
            folded[label] = Backlog(
                label,
                row.queue_depth,
                row.pending,
                row.oldest_pending_age_seconds,
                row.held_keys,
                row.paused,
            )
            continue
        depth = None
        if seen.queue_depth is not None or row.queue_depth is not None:
            depth = (seen.queue_depth or 0) + (row.queue_depth or 0)
        folded[label] = Backlog(
            label,
            depth,
            seen.pending + row.pending,
            max(seen.oldest_pending_age_seconds, row.oldest_pending_age_seconds),
            seen.held_keys + row.held_keys,
            seen.paused or row.paused,
        )
    return list(folded.values())


def scrape_registry(*extra: Collector) -> CollectorRegistry:
    """The registry to serve: every process's samples in multiprocess mode, else this one's."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


class _Forward(Collector):
    """Serves the default registry's metrics through another registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source.collect()


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def serve(port: int, addr: str = "0.0.0.0") -> Callable[[], None]:
    """Serve ``/metrics`` (every process's samples) from a thread; returns a function that stops
    it. For workers: it reads only the samples files, so it answers with the database down."""
    server, thread = start_http_server(port, addr, registry=scrape_registry())
    log.info("metrics on http://%s:%d/metrics", addr, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def mark_process_dead(pid: int) -> None:
    """Forget a dead process's live gauges (its counters stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
