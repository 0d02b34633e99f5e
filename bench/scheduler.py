"""The scheduler's phases (issue 20): fairness across tenants, per-entity order, the broker's
memory under a backlog.

* ``fairness``: tenant A's backlog drained alone, then again while tenant B publishes one event
  every 100 ms: B's publish -> processed latency, and A's drain rate against its rate alone.
* ``order``: ordered events over many entities drained by 4 worker processes, against the same
  unordered (throughput ratio); then a correctness run with 10% of first attempts failing and
  one worker SIGKILLed mid-run: events completed after a later one of their entity, lost,
  completed twice (read from rows the handler writes through its session).
* ``broker``: a big backlog published with the module's workers stopped: messages waiting on
  its queue and Redis ``used_memory`` growth; then drained, every event processed.

Every phase publishes through the API (batches of 1,000 unless said) and reads the outcome from
the database: ``processed_at - created_at`` is the bus's own record of each event.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench.endtoend import (
    E2E_TENANT,
    BusLayout,
    cpu_ms_per_event,
    start_module_workers,
)
from bench.load import system_token
from bench.monitor import Monitor
from bench.names import E2E_EVENT_TYPE, E2E_MODULE, ORDERED_MODULE, UNORDERED_MODULE
from bench.procs import BenchError, Proc, Stack, wait_until
from bench.stack import BusConfig, Database, flush_queues, start_api
from bus.broker.queues import queue_name

TENANT_B = uuid.UUID("0e2e0e2e-0000-4000-8000-00000000000b")
ORDER_ENV = {"EVENTBUS_RETRY_BASE_SECONDS": "0.2", "EVENTBUS_WORKER_HEARTBEAT_SECONDS": "1"}
"""Quick retries (a failed ordered event holds its key until its retry) and heartbeats (a
SIGKILLed worker's claims end after 3 of them)."""


@dataclass(frozen=True)
class SchedulerPlan:
    fairness_backlog: int
    b_interval_s: float
    order_events: int
    order_entities: int
    broker_events: int


FULL = SchedulerPlan(100_000, 0.1, 10_000, 100, 1_000_000)
QUICK = SchedulerPlan(3_000, 0.1, 1_000, 20, 5_000)


def _progress(message: str) -> None:
    print(f"[bench] {message}", flush=True)


class _Bus:
    """An API and workers on the bench's database and Redis, for one phase."""

    def __init__(
        self, stack: Stack, monitor: Monitor, out_dir: Path, db: Database, config: BusConfig
    ) -> None:
        self.stack, self.monitor, self.out_dir, self.db, self.config = (
            stack,
            monitor,
            out_dir,
            db,
            config,
        )
        self.procs: list[Proc] = []

    @contextmanager
    def up(self, tag: str) -> Iterator[int]:
        """The API (one process) for the phase; yields its port; everything stopped after."""
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE system_events, event_attempts, tenant_usage, module_pauses")
        flush_queues(self.config.broker_url, self.config.queue_prefix)
        api = start_api(self.stack, self.out_dir, self.config, 1, tag=f"sched-{tag}")
        self.procs.append(api.proc)
        self.monitor.watch("api", api.proc.pid)
        try:
            yield api.port
        finally:
            for proc in reversed(self.procs):
                self.monitor.unwatch(proc.pid)
                self.stack.stop(proc)
            self.procs.clear()

    def workers(
        self, tag: str, module: str, layout: BusLayout, env: dict[str, str] | None = None
    ) -> list[Proc]:
        started = start_module_workers(
            self.stack, self.monitor, self.out_dir, self.config, f"sched-{tag}", module, layout, env
        )
        self.procs += started
        return started


def _body(
    module: str, entity: str, event_type: str = E2E_EVENT_TYPE, **data: Any
) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "source_module": "bench",
        "target_module": module,
        "entity_type": "item",
        "entity_id": entity,
        "event_data": data,
    }


def publish_batches(
    port: int, token: str, bodies: Sequence[dict[str, Any]], batch: int = 1000, threads: int = 1
) -> None:
    """POST ``bodies`` in batches, in order on each of ``threads`` connections."""
    chunks = [bodies[i : i + batch] for i in range(0, len(bodies), batch)]

    def send(mine: list[Sequence[dict[str, Any]]]) -> None:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as client:
            for chunk in mine:
                response = client.post("/system/events/batch", json={"events": list(chunk)})
                if response.status_code != 201:
                    raise BenchError(f"batch publish: {response.status_code} {response.text[:200]}")

    parts = [chunks[i::threads] for i in range(threads)]
    pool = [threading.Thread(target=send, args=(p,)) for p in parts]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def _settled(db: Database, module: str, count: int, procs: list[Proc], timeout: float) -> None:
    with psycopg.connect(db.dsn, autocommit=True) as conn:

        def done() -> bool:
            for proc in procs:
                if proc.alive() is False and proc.popen.returncode not in (None, -9):
                    proc.check_alive()
            # Cheap while events wait (one index probe of the in-flight set); counted only then,
            # from the counts the bus keeps as data: a count(*) of a million rows every 0.2 s
            # took 40% of a core from the drain it measured.
            waiting = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM event_queue WHERE target_module = %s "
                "AND due_at IS NOT NULL)",
                (module,),
            ).fetchone()
            if waiting is None or waiting[0]:
                return False
            row = conn.execute(
                "SELECT coalesce(sum(n), 0) FROM (SELECT n FROM event_counts WHERE "
                "target_module = %s AND status = 'processed' UNION ALL SELECT n FROM "
                "event_count_changes WHERE target_module = %s AND status = 'processed') c",
                (module, module),
            ).fetchone()
            return row is not None and int(row[0]) >= count

        wait_until(
            done, timeout=timeout, what=f"{count} events of {module} processed", interval=0.2
        )


def _drain_seconds(db: Database, module: str, tenant: uuid.UUID) -> float:
    """From the first completion of the tenant's events of ``module`` to the last: how long
    the workers took to drain them, their start-up left out."""
    with psycopg.connect(db.dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(processed_at) - min(processed_at)) FROM system_events "
            "WHERE target_module = %s AND tenant_id = %s",
            (module, tenant),
        ).fetchone()
    assert row is not None and row[0] is not None
    return max(float(row[0]), 1e-3)


def _latencies(db: Database, module: str, tenant: uuid.UUID) -> dict[str, float]:
    with psycopg.connect(db.dsn) as conn:
        row = conn.execute(
            "SELECT count(*), percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
            "(ORDER BY extract(epoch FROM processed_at - created_at)), "
            "extract(epoch FROM max(processed_at - created_at)) FROM system_events "
            "WHERE target_module = %s AND tenant_id = %s AND status = 'processed'",
            (module, tenant),
        ).fetchone()
    assert row is not None
    n, pcts, worst = row
    return {
        "events": int(n),
        "p50": round(float(pcts[0]) * 1000, 1),
        "p99": round(float(pcts[1]) * 1000, 1),
        "max": round(float(worst) * 1000, 1),
    }


# --- fairness -----------------------------------------------------------------------------------


def fairness(bus: _Bus, plan: SchedulerPlan, layout: BusLayout) -> dict[str, Any]:
    """A's backlog alone, then with B publishing one event every ``b_interval_s``."""
    token_a = system_token(bus.config.jwt_secret, E2E_TENANT)
    token_b = system_token(bus.config.jwt_secret, TENANT_B)
    backlog = [_body(E2E_MODULE, f"a-{i % 1000}") for i in range(plan.fairness_backlog)]
    result: dict[str, Any] = {"backlog": plan.fairness_backlog, "layout": layout.label}
    for run in ("alone", "with_b"):
        with bus.up(f"fair-{run}") as port:
            publish_batches(port, token_a, backlog, threads=2)
            stop = threading.Event()
            sent: list[int] = []

            def trickle(
                port: int = port, stop: threading.Event = stop, sent: list[int] = sent
            ) -> None:
                with httpx.Client(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"Authorization": f"Bearer {token_b}"},
                    timeout=30,
                ) as client:
                    while not stop.is_set():
                        started = time.monotonic()
                        response = client.post("/system/events", json=_body(E2E_MODULE, "b-1"))
                        if response.status_code == 201:
                            sent.append(1)
                        stop.wait(max(0.0, plan.b_interval_s - (time.monotonic() - started)))

            started = time.time()
            procs = bus.workers(f"fair-{run}", E2E_MODULE, layout)
            ready = time.time()
            thread = threading.Thread(target=trickle) if run == "with_b" else None
            if thread is not None:
                thread.start()
            with bus.monitor.phase(f"sched:fair-{run}") as usage:
                _settled(bus.db, E2E_MODULE, plan.fairness_backlog, procs, 600)
            if thread is not None:  # B publishes a few at least, however quick A's drain was
                wait_until(lambda s=sent: len(s) >= 5, timeout=30, what="B events", interval=0.05)
            stop.set()
            if thread is not None:
                thread.join()
                _settled(bus.db, E2E_MODULE, plan.fairness_backlog + len(sent), procs, 60)
            drain = _drain_seconds(bus.db, E2E_MODULE, E2E_TENANT)
            result[run] = {
                "a_drain_rate": round(plan.fairness_backlog / drain, 1),
                "workers_start_s": round(ready - started, 2),
                "cpu_ms_per_event": cpu_ms_per_event(usage, plan.fairness_backlog),
            }
            if run == "with_b":
                result[run]["b_latency_ms"] = _latencies(bus.db, E2E_MODULE, TENANT_B)
    result["a_ratio"] = round(result["with_b"]["a_drain_rate"] / result["alone"]["a_drain_rate"], 3)
    b = result["with_b"]["b_latency_ms"]
    _progress(
        f"fairness: B p99 {b['p99']} ms ({b['events']} events), A drains at "
        f"{result['a_ratio']:.2f} x its rate alone"
    )
    return result


# --- order --------------------------------------------------------------------------------------

ORDER_LAYOUT = BusLayout(api_workers=1, pool="solo", workers=4, concurrency=1, relay=False)


def _effects_table(db: Database) -> None:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_effects (id bigserial PRIMARY KEY, event_id uuid, "
            "entity_id text, seq integer)"
        )
        conn.execute("TRUNCATE bench_effects")


def _order_bodies(module: str, events: int, entities: int, failing: bool) -> list[dict[str, Any]]:
    return [
        _body(
            module,
            f"e{i % entities}",
            "inventory_updated",
            seq=i,
            fail=failing and (i // entities) % 10 == 3,
        )
        for i in range(events)
    ]


def _audit(db: Database, published: int) -> dict[str, int]:
    """Out of order (per entity, a run committed after one of a later event), lost, twice."""
    with psycopg.connect(db.dsn) as conn:
        rows = conn.execute(
            "SELECT entity_id, seq, event_id FROM bench_effects ORDER BY id"
        ).fetchall()
        processed = conn.execute(
            "SELECT count(*) FROM system_events WHERE target_module = %s AND status = 'processed'",
            (ORDERED_MODULE,),
        ).fetchone()
    latest: dict[str, int] = {}
    out_of_order = 0
    seen: dict[uuid.UUID, int] = {}
    for entity, seq, event_id in rows:
        if seq < latest.get(entity, -1):
            out_of_order += 1
        latest[entity] = max(seq, latest.get(entity, -1))
        seen[event_id] = seen.get(event_id, 0) + 1
    return {
        "published": published,
        "processed": int(processed[0]) if processed else 0,
        "effects": len(rows),
        "out_of_order": out_of_order,
        "lost": published - len(seen),
        "completed_twice": sum(1 for n in seen.values() if n > 1),
    }


def order(bus: _Bus, plan: SchedulerPlan) -> dict[str, Any]:
    token = system_token(bus.config.jwt_secret, E2E_TENANT)
    _effects_table(bus.db)
    result: dict[str, Any] = {
        "events": plan.order_events,
        "entities": plan.order_entities,
        "layout": ORDER_LAYOUT.label,
    }
    # Throughput: the same backlog drained ordered and unordered (no failures).
    for module in (UNORDERED_MODULE, ORDERED_MODULE):
        _effects_table(bus.db)
        with bus.up(f"order-{module}") as port:
            bodies = _order_bodies(module, plan.order_events, plan.order_entities, False)
            publish_batches(port, token, bodies, batch=500)
            procs = bus.workers(f"order-{module}", module, ORDER_LAYOUT, ORDER_ENV)
            _settled(bus.db, module, plan.order_events, procs, 600)
            drain = _drain_seconds(bus.db, module, E2E_TENANT)
            result[module] = {"rate": round(plan.order_events / drain, 1)}
    ratio = result[ORDERED_MODULE]["rate"] / result[UNORDERED_MODULE]["rate"]
    result["ordered_ratio"] = round(ratio, 3)
    # Correctness: 10% of first attempts fail, one worker is SIGKILLed mid-run.
    _effects_table(bus.db)
    with bus.up("order-chaos") as port:
        procs = bus.workers("order-chaos", ORDERED_MODULE, ORDER_LAYOUT, ORDER_ENV)
        bodies = _order_bodies(ORDERED_MODULE, plan.order_events, plan.order_entities, True)
        publisher = threading.Thread(
            target=publish_batches, args=(port, token, bodies), kwargs={"batch": 500}
        )
        publisher.start()

        def some_done() -> bool:
            with psycopg.connect(bus.db.dsn) as conn:
                row = conn.execute("SELECT count(*) FROM bench_effects").fetchone()
            return row is not None and int(row[0]) >= plan.order_events // 3

        wait_until(some_done, timeout=300, what="a third processed", interval=0.05)
        victim = procs[0]
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait(10)
        procs += bus.workers(
            "order-chaos-again", ORDERED_MODULE, BusLayout(1, "solo", 1, 1), ORDER_ENV
        )
        publisher.join()
        _settled(
            bus.db, ORDERED_MODULE, plan.order_events, [p for p in procs if p is not victim], 600
        )
        result["chaos"] = _audit(bus.db, plan.order_events)
    chaos = result["chaos"]
    _progress(
        f"order: {chaos['out_of_order']} out of order, lost {chaos['lost']}, twice "
        f"{chaos['completed_twice']}; ordered {ratio:.2f} x unordered"
    )
    return result


# --- broker -------------------------------------------------------------------------------------


def broker(bus: _Bus, plan: SchedulerPlan, layout: BusLayout) -> dict[str, Any]:
    token = system_token(bus.config.jwt_secret, E2E_TENANT)
    client = redis.Redis.from_url(bus.config.broker_url)
    queue = queue_name(E2E_MODULE, bus.config.queue_prefix)
    result: dict[str, Any] = {"events": plan.broker_events}
    try:
        with bus.up("broker") as port:
            before = int(client.info("memory")["used_memory"])
            depth_max = 0
            step = 100_000
            for start in range(0, plan.broker_events, step):
                count = min(step, plan.broker_events - start)
                bodies = [_body(E2E_MODULE, f"k{i % 1000}") for i in range(count)]
                publish_batches(port, token, bodies, threads=4)
                depth_max = max(depth_max, int(client.llen(queue)))
            after = int(client.info("memory")["used_memory"])
            result["waiting_messages"] = int(client.llen(queue))
            result["waiting_messages_max"] = depth_max
            result["redis_used_memory_growth_bytes"] = after - before
            procs = bus.workers("broker", E2E_MODULE, layout)
            _settled(bus.db, E2E_MODULE, plan.broker_events, procs, 1800)
            drain = _drain_seconds(bus.db, E2E_MODULE, E2E_TENANT)
            with psycopg.connect(bus.db.dsn) as conn:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'processed'), count(*) "
                    "FROM system_events WHERE target_module = %s",
                    (E2E_MODULE,),
                ).fetchone()
            assert row is not None
            result["processed"], result["stored"] = int(row[0]), int(row[1])
            result["lost"] = plan.broker_events - result["processed"]
            result["drain_rate"] = round(plan.broker_events / drain, 1)
    finally:
        client.close()
    grown = result["redis_used_memory_growth_bytes"] / 1e6
    _progress(
        f"broker: {plan.broker_events} waiting with workers stopped: "
        f"{result['waiting_messages']} messages, Redis +{grown:.2f} MB; "
        f"drained at {result['drain_rate']}/s, lost {result['lost']}"
    )
    return result


def run_phases(
    stack: Stack,
    monitor: Monitor,
    out_dir: Path,
    db: Database,
    config: BusConfig,
    plan: SchedulerPlan,
    layout: BusLayout,
) -> dict[str, Any]:
    bus = _Bus(stack, monitor, out_dir, db, config)
    return {
        "fairness": fairness(bus, plan, layout),
        "order": order(bus, plan),
        "broker": broker(bus, plan, layout),
    }
