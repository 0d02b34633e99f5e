"""The publish phase: ``POST /system/events`` at several concurrencies, no worker running.

Only the API's work is measured: verify the token, validate, INSERT and commit, send the
message to Redis, answer 201. The messages pile up on a queue nobody drains and are dropped
after the phase.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench.load import publish_scenario, run_load, system_token
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
) -> dict[str, Any]:
    """Throughput and latency per concurrency, against an API of ``api_workers`` processes."""
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
        with psycopg.connect(db.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM system_events").fetchone()
        stored = int(row[0]) if row else 0
    finally:
        monitor.unwatch(api.proc.pid)
        stack.stop(api.proc)
        db.truncate()
        flush_queues(config.broker_url, config.queue_prefix)
    answered = sum(level["ok"] for level in levels.values())
    return {
        "api_workers": api_workers,
        "levels": levels,
        # Warm-up requests are stored too, so the table holds at least every 201 counted.
        "rows_stored": stored,
        "every_201_stored": stored >= answered,
    }
