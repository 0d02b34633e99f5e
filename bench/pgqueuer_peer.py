"""PgQueuer, the second peer: N no-op jobs enqueued in batches and drained by its own workers.

Workers: ``python -m bench.pgqueuer_peer worker DSN MANAGERS BATCH READY`` runs ``MANAGERS``
``QueueManager``\\ s in one process (one asyncpg connection each, as PgQueuer's own
``tools/benchmark.py`` runs its dequeuers), each ``run(batch_size=BATCH)`` in continuous mode
with PgQueuer's defaults otherwise (NOTIFY wake-ups, batched status log, heartbeats, periodic
log aggregation). It writes READY once every manager's listener answers a health probe.

Enqueuer: ``python -m bench.pgqueuer_peer enqueue DSN N BATCH CONCURRENCY OUT.json [RATE]``
sends N jobs with ``Queries.enqueue`` (one UNNEST ``INSERT`` per batch of BATCH) over CONCURRENCY
connections, and writes when it started and ended. With RATE (jobs/s) it offers them open loop
instead, one job per ``enqueue`` at its scheduled time (job i at start + i / RATE), as the bus's
load generator offers single publishes for its latency lines; how late the sends ran is written
too. Each payload is the bus's publish body, so both sides move the same bytes per event.

Both run under uvloop, as ``pgq run`` and PgQueuer's benchmark do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ENTRYPOINT = "noop"
WARM_ENTRYPOINT = "warm"


def _payload(seq: int) -> bytes:
    from bench.load import publish_body
    from bench.loadgen import SEQ
    from bench.names import E2E_EVENT_TYPE, E2E_MODULE

    return publish_body(E2E_MODULE, E2E_EVENT_TYPE).replace(SEQ, str(seq)).encode()


async def _queries(dsn: str) -> Any:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    connection = await asyncpg.connect(dsn=dsn)
    return Queries(AsyncpgDriver(connection))


async def worker(dsn: str, managers: int, batch_size: int, ready: Path) -> None:
    from pgqueuer import Job, QueueManager

    qms: list[Any] = []
    for _ in range(managers):
        qm = QueueManager(await _queries(dsn))

        @qm.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            """Nothing to do: PgQueuer logs the job successful when this returns."""

        @qm.entrypoint(WARM_ENTRYPOINT)
        async def warm(job: Job) -> None:
            """Warm-up jobs, dropped before the measured run."""

        qms.append(qm)

    def stop() -> None:
        for qm in qms:
            qm.shutdown.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    runs = [asyncio.create_task(qm.run(batch_size=batch_size)) for qm in qms]

    async def healthy(qm: Any) -> None:
        # The probe is a NOTIFY the manager's own listener must receive: only once it
        # answers is the manager woken by new jobs (it would still find them by polling).
        for _ in range(60):
            if any(run.done() for run in runs):
                return
            with contextlib.suppress(Exception):
                await qm.listener_healthy(timeout=timedelta(seconds=0.5))
                return
        raise RuntimeError("a PgQueuer listener never became healthy")

    await asyncio.gather(*(healthy(qm) for qm in qms))
    for run in runs:
        if run.done():
            run.result()  # a manager that failed to start: raise its error
    ready.write_text("ready\n")
    await asyncio.gather(*runs)


async def enqueue(dsn: str, count: int, batch_size: int, concurrency: int) -> dict[str, Any]:
    clients = [await _queries(dsn) for _ in range(concurrency)]
    # Payloads are built before the clock starts, as the load generator pre-encodes requests.
    batches = [
        [_payload(seq) for seq in range(start, min(start + batch_size, count))]
        for start in range(0, count, batch_size)
    ]
    await clients[0].enqueue(WARM_ENTRYPOINT, b"{}")  # statements prepared, pools connected
    pending = list(reversed(batches))

    async def send(client: Any) -> None:
        while pending:
            payloads = pending.pop()
            n = len(payloads)
            await client.enqueue([ENTRYPOINT] * n, payloads, [0] * n)

    first = time.time()
    await asyncio.gather(*(send(client) for client in clients))
    last = time.time()
    return {"count": count, "first_send_epoch": first, "last_send_epoch": last}


async def enqueue_at_rate(dsn: str, count: int, rate: float, concurrency: int) -> dict[str, Any]:
    """One job per ``enqueue`` at job i's scheduled time, on the first free connection."""
    clients: asyncio.Queue[Any] = asyncio.Queue()
    for _ in range(concurrency):
        clients.put_nowait(await _queries(dsn))
    payloads = [_payload(seq) for seq in range(count)]
    warm = await clients.get()
    await warm.enqueue(WARM_ENTRYPOINT, b"{}")
    clients.put_nowait(warm)
    loop = asyncio.get_running_loop()
    lateness: list[float] = []

    async def send(due: float, payload: bytes) -> None:
        client = await clients.get()
        try:
            lateness.append(loop.time() - due)
            await client.enqueue(ENTRYPOINT, payload, 0)
        finally:
            clients.put_nowait(client)

    first = time.time()
    start = loop.time()
    tasks = []
    for i, payload in enumerate(payloads):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(due, payload)))
    await asyncio.gather(*tasks)
    last = time.time()
    lateness.sort()
    return {
        "count": count,
        "first_send_epoch": first,
        "last_send_epoch": last,
        "offered_rate": rate,
        "send_lateness_ms": {
            "p50": round(lateness[len(lateness) // 2] * 1000, 1),
            "p99": round(lateness[int(len(lateness) * 0.99)] * 1000, 1),
        },
    }


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pgqueuer depends on uvloop; plain asyncio still works
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[1] == "worker":
        _run(worker(argv[2], int(argv[3]), int(argv[4]), Path(argv[5])))
        return 0
    if len(argv) in (7, 8) and argv[1] == "enqueue":
        dsn, count, batch, concurrency = argv[2], int(argv[3]), int(argv[4]), int(argv[5])
        if len(argv) == 8:
            result = _run(enqueue_at_rate(dsn, count, float(argv[7]), concurrency))
        else:
            result = _run(enqueue(dsn, count, batch, concurrency))
        Path(argv[6]).write_text(json.dumps(result))
        return 0
    print(
        "usage: python -m bench.pgqueuer_peer worker DSN MANAGERS BATCH READY\n"
        "       python -m bench.pgqueuer_peer enqueue DSN N BATCH CONCURRENCY OUT.json [RATE]",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
