"""What tracing costs the hot paths, in one process, without HTTP: N events published the way
the API's group commit stores them (groups of single publishes: one INSERT, one commit, one
message per group) and processed the way a worker runs a delivery (``EventProcessor.process``
over each message's ids, a no-op handler).

    python bench/tracing_cost.py [--events N] [--group G] [--tracing off|on]

prints one JSON line: this process's CPU microseconds per event for publishing and for
processing (PostgreSQL's and Redis's CPU are not in it). ``--tracing on`` turns
``EVENTBUS_OTEL_ENABLED`` on with a span per publish standing in for the API's server span, and
a batch span processor whose exporter drops the spans (encoding and sending them is the
exporter's cost, not the bus's). ``off`` imports nothing of tracing, so it runs on commits that
have none: run the file from outside any checkout, the code measured coming from PYTHONPATH,
``cd /tmp && PYTHONPATH=<checkout> <venv>/bin/python <this file> --events 5000``, in turn for
each checkout (the README's figures: 9 runs of each).

Needs PostgreSQL and Redis on 127.0.0.1 (``EVENTBUS_BENCH_PG``, ``EVENTBUS_BENCH_REDIS``); it
makes a database of its own and drops it at the end, and uses a queue prefix of its own.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import psycopg
import redis
from celery.app.task import Context

PG_ADMIN = os.environ.get("EVENTBUS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EVENTBUS_BENCH_REDIS", "redis://127.0.0.1:6379/0")
MODULE = "bench"
BODY = {
    "event_type": "inventory_updated",
    "source_module": "inventory",
    "target_module": MODULE,
    "entity_type": "inventory_item",
    "entity_id": "item-1",
    "event_data": {"previous_quantity": 100, "new_quantity": 95, "warehouse_id": "wh-1"},
}


def _database() -> tuple[str, Callable[[], None]]:
    name = f"eventbus_tracing_bench_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}", drop


def _tracing_on() -> Callable[[str], Any]:
    """Tracing on with spans dropped at export; returns how to open a stand-in request span."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from bus.observability import tracing

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    tracing.use(provider)
    tracer = provider.get_tracer("bench")
    return tracer.start_as_current_span


def _settings(url: str, prefix: str, traced: bool) -> Any:
    from bus.settings import Environment, Settings

    overrides: dict[str, Any] = {"otel_enabled": True} if traced else {}
    return Settings(
        env=Environment.TEST,
        database_url=url,
        broker_url=REDIS_URL,
        jwt_secret="bench-secret-that-is-long-enough-for-hs256-0123456789",
        queue_prefix=prefix,
        task_events=False,
        metrics_port=0,
        **overrides,
    )


def _deliveries(client: redis.Redis, queue: str) -> list[tuple[dict[str, Any], list[str]]]:
    """Every message waiting on ``queue`` as (headers, event ids), oldest first."""
    found = []
    while (raw := client.rpop(queue)) is not None:
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        found.append((envelope["headers"], args[0]))
    return found


def run(events: int, group: int, traced: bool) -> dict[str, Any]:
    from bus.auth import Principal
    from bus.publish import service
    from bus.runtime import Runtime
    from bus.storage.migrate import upgrade
    from workers.registry import Registry
    from workers.tasks import EventProcessor

    request_span = _tracing_on() if traced else None
    url, drop = _database()
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    queue = f"{prefix}{MODULE}"
    settings = _settings(url, prefix, traced)
    runtime = Runtime(settings)
    handlers = Registry()
    handlers.add(MODULE, "*", lambda event: None)
    processor = EventProcessor(runtime, handlers)
    caller = Principal("bench", uuid.uuid4(), frozenset({"manage:system"}), False, "system")
    try:
        upgrade(url)

        def publish(count: int) -> float:
            started = time.process_time()
            for _ in range(0, count, group):
                rows, traces = [], []
                for _ in range(group):
                    if request_span is None:
                        rows.append(service.prepare_publish(settings, caller, None, dict(BODY)))
                        continue
                    with request_span("POST /system/events"):
                        rows.append(service.prepare_publish(settings, caller, None, dict(BODY)))
                        traces.append(_current())
                with runtime.unit_of_work() as uow:
                    if traced:
                        service.store_published(uow, rows, traces)
                    else:
                        service.store_published(uow, rows)
                    uow.commit()
            return time.process_time() - started

        def process() -> float:
            deliveries = _deliveries(client, queue)
            started = time.process_time()
            for headers, ids in deliveries:
                request = Context({**headers, "delivery_info": {}, "retries": 0})
                processor.process(SimpleNamespace(request=request), ids)  # type: ignore[arg-type]
            return time.process_time() - started

        publish(group * 2)  # warm-up: connections, statement caches, imports
        process()
        published = publish(events)
        processed = process()
        return {
            "tracing": "on" if traced else "off",
            "events": events,
            "group": group,
            "publish_us_per_event": round(published / events * 1e6, 1),
            "process_us_per_event": round(processed / events * 1e6, 1),
        }
    finally:
        runtime.close()
        client.delete(queue)
        client.close()
        drop()


def _current() -> str | None:
    from bus.observability import tracing

    return tracing.current_traceparent()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/tracing_cost.py")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--group", type=int, default=100)
    parser.add_argument("--tracing", choices=["off", "on"], default="off")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.events, args.group, args.tracing == "on")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
