"""The end-to-end phase: N events published through the API, all processed by bus workers.

Three shapes of load (``Load``): single ``POST /system/events`` at a concurrency (64 for the
headline), ``POST /system/events/batch`` of a batch size at a concurrency, and single publishes
offered open-loop at a fixed rate (for latency below saturation).

Rate: from the load generator's first send to the last ``processed_at`` in the table. Latency:
``processed_at - created_at`` of every row, so it is the bus's own record of each event, not a
sample. The workers run ``eventbus worker`` with the bus's Celery settings untouched (acks late,
prefetch 1), task events as ``BusConfig.task_events`` says (off: bare Celery sends none either);
only pool, process count and concurrency vary.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery

from bench.load import publish_scenario, run_load, system_token
from bench.monitor import Monitor
from bench.names import E2E_EVENT_TYPE, E2E_MODULE, WARM_MODULE
from bench.procs import BIN, BenchError, Proc, Stack, wait_until
from bench.stack import BusConfig, Database, flush_queues, start_api
from bus.broker.queues import queue_name

E2E_TENANT = uuid.UUID("0e2e0e2e-0000-4000-8000-000000000001")


@dataclass(frozen=True)
class BusLayout:
    """Processes of the bus for one end-to-end run."""

    api_workers: int
    pool: str
    workers: int
    concurrency: int
    relay: bool = True

    @property
    def label(self) -> str:
        relay = " + relay" if self.relay else ""
        return (
            f"API x{self.api_workers}, {self.workers}x {self.pool} worker "
            f"c={self.concurrency}{relay}"
        )


@dataclass(frozen=True)
class Load:
    """How the events are offered: ``batch`` events per request (1: the single publish) from
    ``concurrency`` connections, open loop at ``rate`` events/s when set."""

    batch: int = 1
    concurrency: int = 64
    rate: float | None = None

    @property
    def label(self) -> str:
        what = "single publishes" if self.batch == 1 else f"batches of {self.batch}"
        if self.rate:
            return f"{what} offered at {self.rate:.0f} events/s ({self.concurrency} connections)"
        return f"{what}, c={self.concurrency}"


def cpu_ms_per_event(usage: dict[str, object], events: int) -> dict[str, float]:
    """CPU milliseconds per event of each process group over a phase (cores x its seconds)."""
    elapsed = float(usage.get("elapsed_s", 0.0))  # type: ignore[arg-type]
    cores: dict[str, float] = usage.get("cpu_cores", {})  # type: ignore[assignment]
    if events <= 0 or elapsed <= 0:
        return {}
    return {group: round(c * elapsed * 1000 / events, 3) for group, c in cores.items()}


def start_module_workers(
    stack: Stack,
    monitor: Monitor,
    out_dir: Path,
    config: BusConfig,
    name: str,
    module: str,
    layout: BusLayout,
    env: dict[str, str] | None = None,
) -> list[Proc]:
    """``layout``'s ``eventbus worker`` processes of ``module`` (logs named ``name``-worker<i>),
    watched as ``bus_workers``; returned once every one answers a ping."""
    started = []
    for i in range(layout.workers):
        argv = [
            str(BIN / "eventbus"), "worker", "--modules", module, "--pool", layout.pool,
            "--concurrency", str(layout.concurrency), "--loglevel", "WARNING",
        ]  # fmt: skip
        proc = stack.add(
            Proc(
                f"{name}-worker{i}-{time.monotonic_ns()}",
                argv,
                log_dir=out_dir,
                env=config.env(**(env or {})),
            )
        )
        monitor.watch("bus_workers", proc.pid)
        started.append(proc)
    wait_for_bus_workers(config.broker_url, len(started), timeout=90)
    return started


def wait_for_bus_workers(broker_url: str, expected: int, timeout: float) -> None:
    """Every ``eventbus worker`` (named ``eventbus-<pid>@host``) answers a ping: consuming."""
    control = Celery("bench-control", broker=broker_url, set_as_current=False)
    seen: set[str] = set()
    with control.connection_for_write() as conn:

        def all_answer() -> bool:
            for reply in control.control.ping(timeout=0.5, connection=conn):
                seen.update(name for name in reply if name.startswith("eventbus-"))
            return len(seen) >= expected

        wait_until(all_answer, timeout=timeout, what=f"{expected} bus worker(s)", interval=0.1)


_STATS = """
SELECT count(*),
       count(*) FILTER (WHERE status = 'processed'),
       count(*) FILTER (WHERE status = 'failed'),
       extract(epoch FROM min(created_at)),
       extract(epoch FROM max(processed_at)),
       percentile_cont(ARRAY[0.5, 0.9, 0.99])
           WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)),
       extract(epoch FROM max(processed_at - created_at)),
       sum(retry_count),
       count(*) FILTER (WHERE processed_at > to_timestamp(%s))
FROM system_events WHERE tenant_id = %s AND target_module = %s
"""


def _row_stats(db: Database, publish_ended: float) -> dict[str, Any]:
    with psycopg.connect(db.dsn) as conn:
        row = conn.execute(_STATS, (publish_ended, E2E_TENANT, E2E_MODULE)).fetchone()
    assert row is not None
    published, processed, failed, first_created, last_processed, pcts, worst, retries, after = row
    pcts = pcts or [float("nan")] * 3
    return {
        "rows": int(published),
        "processed": int(processed),
        "failed": int(failed),
        "retries": int(retries or 0),
        "processed_after_publishing": int(after),
        "first_created_epoch": float(first_created) if first_created is not None else None,
        "last_processed_epoch": float(last_processed) if last_processed is not None else None,
        "latency_ms": {
            "p50": round(float(pcts[0]) * 1000, 1),
            "p90": round(float(pcts[1]) * 1000, 1),
            "p99": round(float(pcts[2]) * 1000, 1),
            "max": round(float(worst) * 1000, 1) if worst is not None else None,
        },
    }


def wait_all_settled(
    db: Database, count: int, procs: list[Proc], tenant: uuid.UUID = E2E_TENANT
) -> None:
    """Poll until ``count`` events of ``tenant`` are no longer pending; bounded by a 20
    events/s floor."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:

        def settled() -> bool:
            for proc in procs:
                proc.check_alive()
            # One index probe of the in-flight set while events wait; counted only when none
            # does (a count(*) of the phase's rows every 0.2 s took CPU from what it measured).
            waiting = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM event_queue WHERE tenant_id = %s "
                "AND target_module = %s AND status = 'pending')",
                (tenant, E2E_MODULE),
            ).fetchone()
            if waiting is None or waiting[0]:
                return False
            row = conn.execute(
                "SELECT count(*) FROM system_events WHERE tenant_id = %s AND target_module = %s"
                " AND status <> 'pending'",
                (tenant, E2E_MODULE),
            ).fetchone()
            return row is not None and int(row[0]) >= count

        wait_until(
            settled, timeout=120 + count / 20, what=f"{count} events processed", interval=0.2
        )


def _warm_up(
    stack: Stack,
    monitor: Monitor,
    out_dir: Path,
    db: Database,
    config: BusConfig,
    port: int,
    token: str,
    seconds: float,
    load: Load,
) -> None:
    """Fill the API's thread, database and broker pools, then forget those events."""
    scenario = publish_scenario(
        "warm-up",
        token,
        WARM_MODULE,
        "warm_up",
        concurrency=load.concurrency if load.batch > 1 else 64,
        duration=seconds,
        batch=load.batch,
    )
    run_load(stack, monitor, out_dir, port, [scenario], "e2e-warmup")
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM system_events WHERE tenant_id = %s AND target_module = %s",
            (E2E_TENANT, WARM_MODULE),
        )
    flush_queues(config.broker_url, queue_name(WARM_MODULE, config.queue_prefix))


STATS_FLUSH_SECONDS = 11.0
"""PostgreSQL 15's backends report their table counters when idle, at most 10 s late."""

_WRITES = """
SELECT coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_hot_upd), 0),
       (SELECT count(*) FROM pg_index WHERE indrelid = 'system_events'::regclass)
FROM pg_stat_user_tables
WHERE relid IN (SELECT relid FROM pg_partition_tree('system_events') WHERE isleaf)
"""


def history_writes(db: Database) -> tuple[int, int, int]:
    """Updates and HOT updates of the history's partitions so far, and its indexes."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        row = conn.execute(_WRITES).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def completion_writes(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, Any]:
    """What the run's status changes wrote to the history: updates, the HOT share, and index
    entries per update (a HOT update writes none; any other one entry in every index)."""
    updates, hot = after[0] - before[0], after[1] - before[1]
    if updates <= 0:
        return {"updates": 0}
    return {
        "updates": updates,
        "hot": hot,
        "hot_share": round(hot / updates, 3),
        "indexes": after[2],
        "index_entries_per_update": round((updates - hot) * after[2] / updates, 2),
    }


Then = Callable[[dict[str, Any]], "tuple[Load, int, str] | None"]
"""Given a run's result, another (load, count, tag) to measure on the same processes, or None."""

Reset = Callable[[Database], None]
"""Clears the rows of earlier runs before a run: ``Database.truncate`` unless told otherwise
(``bench.history`` keeps its history and deletes only the bench's own tenant's rows)."""


def run_e2e(
    stack: Stack,
    monitor: Monitor,
    out_dir: Path,
    db: Database,
    config: BusConfig,
    layout: BusLayout,
    count: int,
    tag: str,
    *,
    load: Load | None = None,
    warmup_seconds: float = 1.0,
    then: Then | None = None,
    reset: Reset | None = None,
) -> dict[str, Any]:
    """Publish ``count`` events as ``load`` says while the workers drain them.

    Every statement on the events is bounded by the bench's tenant (``E2E_TENANT``): an index
    seek however much history the table holds.

    ``count`` is rounded up to a whole number of batches. ``then``, if given, may ask for one
    more measurement on the same API and workers (its result is the result's ``then``).
    """
    load = load or Load()
    reset = reset or Database.truncate
    reset(db)
    flush_queues(config.broker_url, config.queue_prefix)
    token = system_token(config.jwt_secret, E2E_TENANT)
    started: list[Proc] = []
    try:
        api = start_api(stack, out_dir, config, layout.api_workers, tag=f"e2e-{tag}")
        started.append(api.proc)
        monitor.watch("api", api.proc.pid)
        _warm_up(stack, monitor, out_dir, db, config, api.port, token, warmup_seconds, load)
        if layout.relay:
            # Started before the workers so its start-up is over when the clock starts.
            relay = stack.add(
                Proc(
                    f"bus-{tag}-relay",
                    [str(BIN / "eventbus"), "relay", "--loglevel", "WARNING"],
                    log_dir=out_dir,
                    env=config.env(),
                )
            )
            started.append(relay)
            monitor.watch("relay", relay.pid)
        for i in range(layout.workers):
            argv = [
                str(BIN / "eventbus"), "worker",
                "--modules", E2E_MODULE,
                "--pool", layout.pool,
                "--concurrency", str(layout.concurrency),
                "--loglevel", "WARNING",
            ]  # fmt: skip
            proc = stack.add(Proc(f"bus-{tag}-worker{i}", argv, log_dir=out_dir, env=config.env()))
            started.append(proc)
            monitor.watch("bus_workers", proc.pid)
        wait_for_bus_workers(config.broker_url, layout.workers, timeout=90)
        run = _Measure(stack, monitor, out_dir, db, api.port, token, started, layout)
        result = run.measure(load, count, tag)
        follow = then(result) if then is not None else None
        if follow is not None:
            # The queues are empty once every event settled; only the rows are cleared (the
            # workers' queue bindings must stay).
            reset(db)
            result["then"] = run.measure(*follow)
    finally:
        for proc in reversed(started):
            monitor.unwatch(proc.pid)
            stack.stop(proc)
    return result


@dataclass
class _Measure:
    stack: Stack
    monitor: Monitor
    out_dir: Path
    db: Database
    port: int
    token: str
    started: list[Proc]
    layout: BusLayout

    def measure(self, load: Load, count: int, tag: str) -> dict[str, Any]:
        """One measured run on processes that are up: publish, wait until settled, read rows."""
        # What completions write, for the batched final runs (the figure issue 19 asks for):
        # reading it costs a wait for PostgreSQL's counters.
        writes_before = history_writes(self.db) if tag.startswith("bfinal") else None
        requests = math.ceil(count / load.batch)
        count = requests * load.batch
        with self.monitor.phase(f"e2e:{tag}") as usage:
            scenario = publish_scenario(
                f"e2e-{tag}",
                self.token,
                E2E_MODULE,
                E2E_EVENT_TYPE,
                concurrency=load.concurrency,
                count=requests,
                max_seconds=120 + count / 20,
                batch=load.batch,
                rate=load.rate / load.batch if load.rate else None,
            )
            [published] = run_load(
                self.stack, self.monitor, self.out_dir, self.port, [scenario], f"e2e-{tag}"
            )
            if published["ok"] != requests:
                raise BenchError(
                    f"end-to-end {tag}: {published['ok']}/{requests} requests answered 201 "
                    f"({published['statuses']}, errors {published['first_errors']})"
                )
            wait_all_settled(self.db, count, self.started)
        stats = _row_stats(self.db, published["last_done_epoch"])
        result = _result(self.layout, load, count, published, stats, usage, tag)
        if writes_before is not None:
            time.sleep(STATS_FLUSH_SECONDS)
            after = history_writes(self.db)
            result["completion_writes"] = completion_writes(writes_before, after)
        return result


def _result(
    layout: BusLayout,
    load: Load,
    count: int,
    published: dict[str, Any],
    stats: dict[str, Any],
    usage: dict[str, Any],
    tag: str,
) -> dict[str, Any]:
    first_send = published["first_send_epoch"]
    last_processed = stats["last_processed_epoch"]
    if last_processed is None or stats["processed"] != count:
        raise BenchError(f"end-to-end {tag}: {stats['processed']}/{count} processed: {stats}")
    elapsed = last_processed - first_send
    rows_elapsed = last_processed - stats["first_created_epoch"]
    # Once the last publish is answered the workers have the machine to themselves: their
    # rate then, set against the overall one, shows whether publishing starved them.
    tail = last_processed - published["last_done_epoch"]
    after = stats["processed_after_publishing"]
    return {
        "layout": asdict(layout),
        "load": asdict(load),
        "label": f"{layout.label}; {load.label}",
        "events": count,
        "publish_concurrency": load.concurrency,
        "elapsed_s": round(elapsed, 3),
        "rate": round(count / elapsed, 1),
        "rate_from_rows": round(count / rows_elapsed, 1) if rows_elapsed > 0 else None,
        "backlog_when_publishing_ended": after,
        "drain_rate_after_publishing": round(after / tail, 1) if after > 50 and tail > 0 else None,
        "latency_ms": stats["latency_ms"],
        "processed": stats["processed"],
        "failed": stats["failed"],
        "retries": stats["retries"],
        "publish": {
            "rps": published["rps"],
            "events_per_s": round(published["rps"] * load.batch, 1),
            "offered_rate": load.rate,
            "latency_ms": published["latency_ms"],
            "errors": published["errors"],
        },
        "usage": usage,
        "cpu_ms_per_event": cpu_ms_per_event(usage, count),
    }
