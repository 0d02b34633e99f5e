"""Prometheus metrics, correct under several uvicorn workers and Celery's prefork pool.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the CLI sets it before anything imports
prometheus_client) every process writes its samples to files there, and a scrape sums them.
Backlog figures (queue depth, oldest pending age) are read fresh at scrape time instead.
"""

from __future__ import annotations

import os
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
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
HTTP_SECONDS = Histogram(
    "eventbus_http_request_duration_seconds",
    "HTTP request latency",
    ("method", "route", "status"),
    buckets=_LATENCY_BUCKETS,
)


@dataclass(frozen=True, slots=True)
class Backlog:
    """One module's backlog: messages on its queue, pending events and the oldest one's age."""

    target_module: str
    queue_depth: int | None
    pending: int
    oldest_pending_age_seconds: float


class BacklogCollector(Collector):
    """Gauges computed at scrape time from a callable (database and broker lookups)."""

    def __init__(self, read: Callable[[], Iterable[Backlog]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "eventbus_queue_depth", "Messages waiting on a module's queue", labels=["target_module"]
        )
        age = GaugeMetricFamily(
            "eventbus_oldest_pending_age_seconds",
            "Age of the oldest pending event of a module",
            labels=["target_module"],
        )
        pending = GaugeMetricFamily(
            "eventbus_pending_events", "Pending events of a module", labels=["target_module"]
        )
        for row in self._read():
            if row.queue_depth is not None:
                depth.add_metric([row.target_module], row.queue_depth)
            age.add_metric([row.target_module], row.oldest_pending_age_seconds)
            pending.add_metric([row.target_module], row.pending)
        yield depth
        yield age
        yield pending


def scrape_registry(*extra: Collector) -> CollectorRegistry:
    """The registry to serve: every process's samples in multiprocess mode, else this one's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
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


def mark_process_dead(pid: int) -> None:
    """Forget a dead process's live gauges (its counters stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
