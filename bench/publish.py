"""The publish phase: ``POST /system/events`` at several concurrencies, no worker running.

Only the API's work is measured: verify the token, validate, INSERT and commit, send the
message to Redis, answer 201. The messages pile up on a queue nobody drains and are dropped
after the phase. Then, if ``POST /system/events/batch`` answers its contract (one probe), the
batch endpoint alone at each batch shape the plan lists, in events/s.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench.endtoend import Load
from bench.load import probe_batch, publish_scenario, run_load, system_token
from bench.monitor import Monitor
from bench.names import PUBLISH_MODULE
from bench.procs import Stack
from bench.stack import BusConfig, Database, flush_queues, start_api

PUBLISH_TENANT = uuid.UUID("0b0b0b0b-0000-4000-8000-000000000001")


def run_publish(
    stack: Stack,
    monitor: Monitor,
    out_dir: Path,
    db: Database,
    config: BusConfig,
    *,
    api_workers: int,
    concurrencies: tuple[int, ...],
    seconds: float,
    warmup: float,
    batch_loads: tuple[Load, ...] = (),
    batch_events: int = 2_000,
) -> dict[str, Any]:
    """Throughput and latency per concurrency, against an API of ``api_workers`` processes.

    The batch endpoint runs for a number of requests rather than seconds (``batch_events``
    events after one unmeasured request per connection): a request of hundreds of events can
    take longer than a short window.
    """
    db.truncate()
    flush_queues(config.broker_url, config.queue_prefix)
    token = system_token(config.jwt_secret, PUBLISH_TENANT)
    api = start_api(stack, out_dir, config, api_workers, tag=f"publish-w{api_workers}")
    monitor.watch("api", api.proc.pid)
    levels: dict[str, Any] = {}
    try:
        for concurrency in concurrencies:
            name = f"publish-w{api_workers}-c{concurrency}"
            scenario = publish_scenario(
                name,
                token,
                PUBLISH_MODULE,
                "inventory_updated",
                concurrency=concurrency,
                duration=seconds,
                warmup=warmup,
                max_seconds=seconds + warmup + 120,
            )
            with monitor.phase(name) as usage:
                [result] = run_load(stack, monitor, out_dir, api.port, [scenario], name)
            api.proc.check_alive()
            result["usage"] = usage
            levels[f"c{concurrency}"] = result
        probe = probe_batch(api.port, token, PUBLISH_MODULE, "inventory_updated")
        batch_levels: dict[str, Any] = {}
        for load in batch_loads if probe.available else ():
            name = f"publish-w{api_workers}-batch{load.batch}-c{load.concurrency}"
            scenario = publish_scenario(
                name,
                token,
                PUBLISH_MODULE,
                "inventory_updated",
                concurrency=load.concurrency,
                count=max(2 * load.concurrency, batch_events // load.batch),
                warmup_count=load.concurrency,
                max_seconds=120 + batch_events / 20,
                batch=load.batch,
            )
            with monitor.phase(name) as usage:
                [result] = run_load(stack, monitor, out_dir, api.port, [scenario], name)
            api.proc.check_alive()
            result["usage"] = usage
            result["batch"] = load.batch
            result["events_per_s"] = round(result["rps"] * load.batch, 1)
            batch_levels[f"batch{load.batch}_c{load.concurrency}"] = result
        with psycopg.connect(db.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM system_events").fetchone()
        stored = int(row[0]) if row else 0
    finally:
        monitor.unwatch(api.proc.pid)
        stack.stop(api.proc)
        db.truncate()
        flush_queues(config.broker_url, config.queue_prefix)
    answered = sum(level["ok"] for level in levels.values())
    answered += sum(level["ok"] * level["batch"] for level in batch_levels.values())
    return {
        "api_workers": api_workers,
        "levels": levels,
        "batch_endpoint": {
            "available": probe.available,
            "absent": probe.absent,
            "status": probe.status,
            "detail": probe.detail,
        },
        "batch_levels": batch_levels,
        # Warm-up requests are stored too, so the table holds at least every 201 counted.
        "rows_stored": stored,
        "every_201_stored": stored >= answered,
    }
