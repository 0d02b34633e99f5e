"""Bare Celery, the baseline: a no-op task that counts itself done in Redis.

Workers: ``celery -A bench.bare_celery worker -Q <queue> ...`` with ``BENCH_BROKER_URL``,
``BENCH_COUNTER_KEY`` and ``BENCH_PREFETCH`` in the environment.
Publisher: ``python -m bench.bare_celery publish N OUT.json`` sends N tasks with ``apply_async``
from one process, as a user calling Celery directly would, and writes when it started and ended.

Celery's defaults are kept where they are what a user gets (acks early, no result backend);
only the knobs the bench searches over (pool, workers, prefetch) vary.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import redis
from celery import Celery

QUEUE = "bare.noop"
TASK = "bare.noop"

app = Celery("bare", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "4")),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_counter: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    """One client per process: a prefork child must not share its parent's socket."""
    pid = os.getpid()
    client = _counter.get(pid)
    if client is None:
        client = _counter[pid] = redis.Redis.from_url(app.conf.broker_url)
    return client


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop(_seq: int) -> None:
    """Do nothing but say so: one INCR, which the harness polls to know when all are done."""
    _redis().incr(os.environ["BENCH_COUNTER_KEY"])


def publish(count: int) -> dict[str, Any]:
    """Send ``count`` tasks back to back through Celery's producer pool."""
    noop.apply_async(args=[-1], queue=f"{QUEUE}.warm")  # connect before the clock starts
    first = time.time()
    for seq in range(count):
        noop.apply_async(args=[seq], queue=QUEUE)
    last = time.time()
    return {"count": count, "first_send_epoch": first, "last_send_epoch": last}


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] != "publish":
        print("usage: python -m bench.bare_celery publish N OUT.json", file=sys.stderr)
        return 2
    result = publish(int(argv[2]))
    with open(argv[3], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
