"""``python -m bench.history`` (``make bench-history``): the bus with and without a long history.

The same measurements twice in one run, on one stack (a Redis and a PostgreSQL database of the
run's own, dropped at the end):

1. on an empty store: the end-to-end rates, single publishes and batches (``bench.endtoend``,
   the layout and load shapes ``make bench`` found fastest: API x1, one prefork worker c=2 +
   maintenance; single publishes at c=64, batches of 500 from 2 connections), then
   ``GET /system/events`` page 1 with its exact total (big and typical tenant, the three
   filter sets of ``bench.listing``) and ``GET /system/events/{id}``, one request at a time;
2. history seeded: ``--rows`` events (20M by default) over 30 past days, one day partition
   each, 50 tenants (one holding 40% of the rows), 97% processed and 3% failed for good,
   UUIDv7 ids naming their ``created_at``, ~200-byte ``event_data``. Each day is a standalone
   table filled by one ``INSERT … SELECT generate_series`` (no index, no trigger), indexed,
   then attached (its indexes become the parent's partitions'; a CHECK of its bounds spares
   the ATTACH a scan) in the transaction that adds its rows to ``event_counts``, so ``total``
   stays exact; then VACUUM ANALYZE;
3. the measurements of 1 again.

The last line: ``history: batched R1 x, single R2 x, list p99 A ms, get p99 B ms at 20M rows``
(R: the rate with the history over the rate on the empty store; A: the slowest list case's
p99; B: the slowest get's p99, both with the history). Targets: R ≥ 0.95, A < 20, B < 5.

The bench's own events are kept apart from the history by their tenant (``E2E_TENANT``): the
e2e phase deletes only that tenant's rows between runs, never the history. The bus processes
run with ``EVENTBUS_RETENTION_DAYS=90`` so the maintenance never drops a seeded day mid-run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.endtoend import E2E_TENANT, BusLayout, Load, run_e2e
from bench.listing import (
    BIG_TENANT,
    TENANTS,
    TYPICAL_TENANT,
    cases,
    explain_case,
    list_scenarios,
    tenant_id,
)
from bench.load import reader_token, run_load
from bench.monitor import Monitor
from bench.procs import REPO, BenchError, Stack
from bench.run import median_run
from bench.stack import BusConfig, Database, start_api, start_redis
from bus.storage import partitions
from bus.storage.db import make_engine
from bus.storage.models import COUNT_KEY

DEFAULT_ROWS = 20_000_000
DAYS = 30
BIG_SHARE = 0.40
FAILED_SHARE = 0.03
MODULES = 10
EVENT_TYPES = 20
RETENTION_DAYS = 90
BYTES_PER_ROW = 1000
"""Heap + indexes per seeded row, for the disk check (measured ~0.9 kB at 200k rows)."""

LAYOUT = BusLayout(api_workers=1, pool="prefork", workers=1, concurrency=2)
SINGLE = Load(batch=1, concurrency=64)
BATCHED = Load(batch=500, concurrency=2)
TARGETS = {"batched_ratio": 0.95, "single_ratio": 0.95, "list_p99_ms": 20.0, "get_p99_ms": 5.0}


@dataclass(frozen=True)
class Plan:
    mode: str
    rows: int
    single_events: int
    batch_events: int
    repeats: int
    e2e_warmup: float
    list_requests: int
    list_warmup: int
    get_requests: int
    jobs: int


FULL = Plan(
    mode="full",
    rows=DEFAULT_ROWS,
    single_events=5_000,
    batch_events=20_000,
    repeats=3,
    e2e_warmup=2.0,
    list_requests=200,
    list_warmup=20,
    get_requests=400,
    jobs=2,
)
QUICK = Plan(
    mode="quick",
    rows=200_000,
    single_events=1_000,
    batch_events=5_000,
    repeats=1,
    e2e_warmup=0.5,
    list_requests=50,
    list_warmup=5,
    get_requests=100,
    jobs=2,
)


def _progress(message: str) -> None:
    print(f"[bench-history {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def human_rows(rows: int) -> str:
    """20M, 1.5M, 200k, 950."""
    if rows >= 1_000_000:
        return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows / 1e6:.1f}M"
    if rows >= 1_000:
        return f"{rows // 1_000}k" if rows % 1_000 == 0 else f"{rows / 1e3:.1f}k"
    return str(rows)


# --- the bench's own rows, kept apart from the history ---------------------------------------


def clear_bench_rows(db: Database) -> None:
    """The e2e phase's reset: delete the bench tenant's rows (an index seek per partition;
    the count triggers take them out of the counts), then VACUUM the days they were in, so
    both phases start each run from the same clean partitions."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        days = conn.execute(
            "SELECT DISTINCT tableoid::regclass::text FROM system_events WHERE tenant_id = %s",
            (E2E_TENANT,),
        ).fetchall()
        conn.execute("DELETE FROM system_events WHERE tenant_id = %s", (E2E_TENANT,))
        for (table,) in days:
            conn.execute(f"VACUUM (ANALYZE) {table}")


# --- seeding ----------------------------------------------------------------------------------

_KEY = ", ".join(COUNT_KEY)
_COLUMNS = (
    "id, tenant_id, event_type, source_module, target_module, entity_type, entity_id, "
    "event_data, status, retry_count, created_at, processed_at, error_message, dispatched_at, "
    "next_attempt_at, request_id"
)

# One row per generate_series value, in created_at order (as a day's events arrive): the id is
# a UUIDv7 of created_at's millisecond (48 bits), version 7, 12 random bits, variant 10, 62
# random bits. An event type has one source module and one entity type; each goes to one of
# MODULES targets. ~200 bytes of event_data.
_SEED = f"""
INSERT INTO {{table}} ({_COLUMNS})
SELECT (lpad(to_hex(floor(extract(epoch FROM c) * 1000)::bigint), 12, '0') || '7'
        || substr(h, 1, 3) || substr('89ab', 1 + floor(r4 * 4)::int, 1) || substr(h, 4, 15))::uuid,
       ('00000000-0000-4000-8000-' || lpad(t::text, 12, '0'))::uuid,
       'type_' || k, 'src_' || (k %% 7), 'mod_' || m, 'entity_' || (k %% 5),
       'item-' || e,
       format('{{"sku": "SKU-%%s", "warehouse_id": "warehouse-%%s", "previous_quantity": %%s, '
              '"new_quantity": %%s, "reason": "cycle count adjustment", "lot": "%%s", '
              '"operator": "user-%%s", "unit": "each"}}',
              e, substr(h, 20, 8), q, q - 5, substr(h, 28, 5), e %% 97)::jsonb,
       CASE WHEN f THEN 'failed' ELSE 'processed' END,
       CASE WHEN f THEN 3 ELSE 0 END,
       c,
       c + (20 + floor(r4 * 2000)::int) * interval '1 millisecond',
       CASE WHEN f THEN 'RuntimeError: warehouse service unavailable (bench history)' END,
       c, NULL, substr(h, 16, 16)
FROM (
    SELECT md5(g::text || ':' || r1::text) AS h, c, r4, r5,
           CASE WHEN r1 < %(big)s::float8 THEN {BIG_TENANT}
                ELSE 1 + floor(r2 * %(others)s::int)::int END AS t,
           floor(r3 * {EVENT_TYPES})::int AS k,
           floor(r5 * {MODULES})::int AS m,
           floor(r3 * 100000)::int AS e,
           100 + floor(r4 * 400)::int AS q,
           r4 < %(failed)s::float8 AS f
    FROM (
        SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5,
               %(lo)s::timestamptz + floor((g - 1 + random()) * %(step_us)s::float8)::bigint
                   * interval '1 microsecond' AS c
        FROM generate_series(1, %(n)s::int) AS g
    ) AS base
) AS generated
"""  # noqa: S608 (table and column names only)

_ID_CHECK = """
SELECT count(*), count(*) FILTER (
    WHERE eventbus_id_time(id) IS DISTINCT FROM date_trunc('milliseconds', created_at))
FROM (SELECT id, created_at FROM {table} TABLESAMPLE BERNOULLI (1) LIMIT 2000) AS sample
"""

_COUNT_UPSERT = f"""
INSERT INTO event_counts ({_KEY}, n)
SELECT {_KEY}, count(*) FROM {{table}} GROUP BY {_KEY}
ON CONFLICT ({_KEY}) DO UPDATE SET n = event_counts.n + excluded.n
"""  # noqa: S608

_INDEX_DEF = re.compile(r"^CREATE (UNIQUE )?INDEX \S+ ON ONLY (\S+) ")


def days_to_seed(db: Database, days: int) -> list[date]:
    """The ``days`` days up to two days ago that no partition covers yet, oldest first."""
    today = datetime.now(UTC).date()
    wanted = [today - timedelta(days=k) for k in range(days + 1, 1, -1)]
    engine = make_engine(db.url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            existing = [p for p in partitions.partitions(connection) if not p.default]
    finally:
        engine.dispose()

    def covered(day: date) -> bool:
        lo, hi = partitions.midnight(day), partitions.midnight(day + timedelta(days=1))
        return any((p.lo is None or p.lo < hi) and (p.hi is None or p.hi > lo) for p in existing)

    return [day for day in wanted if not covered(day)]


def _index_ddl(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """The parent's indexes but its key, as CREATE INDEX statements on ``table``."""
    rows = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'system_events' AND indexname NOT IN"
        " (SELECT conname FROM pg_constraint WHERE conrelid = 'system_events'::regclass)"
        " ORDER BY indexname"
    ).fetchall()
    ddl = []
    for (definition,) in rows:
        match = _INDEX_DEF.match(definition)
        if match is None:
            raise BenchError(f"an index definition this bench does not read: {definition}")
        ddl.append(f"CREATE {match[1] or ''}INDEX ON {table} " + definition[match.end() :])
    return ddl


def seed_day(db: Database, day: date, rows: int, serial: bool) -> dict[str, Any]:
    """One day of history: a standalone table, filled, indexed, attached with its counts."""
    name = partitions.day_name(day)
    lo, hi = partitions.midnight(day), partitions.midnight(day + timedelta(days=1))
    timings: dict[str, float] = {}
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        if not serial:  # days run side by side already: one core each
            conn.execute("SET max_parallel_maintenance_workers = 0")
        started = time.monotonic()
        conn.execute(
            f"CREATE TABLE {name} (LIKE system_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        with conn.transaction():
            conn.execute("SELECT setseed(%s)", ((day.toordinal() % 1000) / 1000,))
            conn.execute(
                _SEED.replace("{table}", name),
                {
                    "n": rows,
                    "lo": lo,
                    "step_us": 86_400_000_000 / rows,
                    "big": BIG_SHARE,
                    "others": TENANTS - 1,
                    "failed": FAILED_SHARE,
                },
            )
        timings["insert_s"] = time.monotonic() - started
        sample = conn.execute(_ID_CHECK.replace("{table}", name)).fetchone()
        assert sample is not None
        if sample[1]:
            raise BenchError(f"{name}: {sample[1]} of {sample[0]} ids do not name created_at")
        started = time.monotonic()
        conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id, created_at)")
        for ddl in _index_ddl(conn, name):
            conn.execute(ddl)
        conn.execute(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_bounds "
            f"CHECK (created_at >= '{lo.isoformat()}' AND created_at < '{hi.isoformat()}')"
        )
        timings["index_s"] = time.monotonic() - started
        started = time.monotonic()
        with conn.transaction():
            conn.execute(
                f"ALTER TABLE system_events ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
            conn.execute(_COUNT_UPSERT.replace("{table}", name))
        conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bounds")
        timings["attach_and_count_s"] = time.monotonic() - started
        started = time.monotonic()
        conn.execute(f"VACUUM (ANALYZE) {name}")
        timings["vacuum_s"] = time.monotonic() - started
        found = conn.execute(
            "SELECT (SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass),"
            " (SELECT count(*) FROM pg_index WHERE indrelid = 'system_events'::regclass)",
            (name,),
        ).fetchone()
    assert found is not None
    if found[0] != found[1]:
        raise BenchError(f"{name} has {found[0]} indexes, the parent {found[1]}")
    return {"day": day.isoformat(), "rows": rows, **{k: round(v, 2) for k, v in timings.items()}}


def seed(db: Database, rows: int, days: int, jobs: int) -> dict[str, Any]:
    """``rows`` events over the ``days`` past days no partition covers; checked after."""
    chosen = days_to_seed(db, days)
    if not chosen:
        raise BenchError("no past day is free of a partition to seed")
    per_day = [
        rows // len(chosen) + (1 if i < rows % len(chosen) else 0) for i in range(len(chosen))
    ]
    free = shutil.disk_usage("/").free
    need = rows * BYTES_PER_ROW
    _progress(
        f"seeding {rows:,} events over {len(chosen)} days ({chosen[0]} .. {chosen[-1]}), "
        f"{jobs} at a time; estimated {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    )
    if need > 0.8 * free:
        raise BenchError(
            f"not enough disk: ~{need / 2**30:.1f} GiB needed, {free / 2**30:.1f} free"
        )
    started = time.monotonic()
    done: list[dict[str, Any]] = []

    def one(args: tuple[date, int]) -> dict[str, Any]:
        result = seed_day(db, args[0], args[1], serial=jobs <= 1)
        done.append(result)
        elapsed = time.monotonic() - started
        seeded = sum(d["rows"] for d in done)
        _progress(
            f"  {result['day']}: {result['rows']:,} rows (insert {result['insert_s']} s, "
            f"indexes {result['index_s']} s, vacuum {result['vacuum_s']} s); "
            f"{len(done)}/{len(chosen)} days, {seeded / elapsed:,.0f} rows/s so far"
        )
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, zip(chosen, per_day, strict=True)))
    seconds = time.monotonic() - started
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        conn.execute("ANALYZE system_events")  # the parent's own statistics
        analyze_s = time.monotonic() - t0
        size = conn.execute(
            "SELECT sum(pg_total_relation_size(relid)), sum(pg_relation_size(relid)) FROM"
            " pg_partition_tree('system_events') WHERE isleaf"
        ).fetchone()
        checks = {}
        for label, number in (("big", BIG_TENANT), ("typical", TYPICAL_TENANT)):
            tenant = tenant_id(number)
            counted = conn.execute(
                "SELECT count(*) FROM system_events WHERE tenant_id = %s", (tenant,)
            ).fetchone()
            kept = conn.execute(
                "SELECT coalesce(sum(n), 0) FROM (SELECT n FROM event_counts WHERE tenant_id = %s"
                " UNION ALL SELECT n FROM event_count_changes WHERE tenant_id = %s) c",
                (tenant, tenant),
            ).fetchone()
            assert counted is not None and kept is not None
            if int(counted[0]) != int(kept[0]):
                raise BenchError(f"{label} tenant: {counted[0]} rows, counts say {kept[0]}")
            checks[label] = int(counted[0])
        keys = conn.execute("SELECT count(*) FROM event_counts").fetchone()
    assert size is not None and keys is not None
    total_bytes, heap_bytes = int(size[0] or 0), int(size[1] or 0)
    _progress(
        f"seeded {rows:,} events in {seconds:.0f} s ({rows / seconds:,.0f} rows/s); history "
        f"{total_bytes / 2**30:.2f} GiB with indexes ({heap_bytes / 2**30:.2f} GiB heap); "
        f"counts exact (big tenant {checks['big']:,}, typical {checks['typical']:,})"
    )
    return {
        "rows": rows,
        "days": len(chosen),
        "first_day": chosen[0].isoformat(),
        "last_day": chosen[-1].isoformat(),
        "tenants": TENANTS,
        "big_tenant_share": BIG_SHARE,
        "failed_share": FAILED_SHARE,
        "jobs": jobs,
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds),
        "parent_analyze_s": round(analyze_s, 1),
        "table_and_indexes_bytes": total_bytes,
        "heap_bytes": heap_bytes,
        "bytes_per_row": round(total_bytes / rows),
        "tenant_rows_checked_against_counts": checks,
        "event_counts_keys": int(keys[0]),
        "per_day": sorted(done, key=lambda d: d["day"]),
    }


# --- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    stack: Stack
    monitor: Monitor
    work_dir: Path
    db: Database
    config: BusConfig


def _e2e(ctx: _Ctx, plan: Plan, load: Load, events: int, tag: str) -> dict[str, Any]:
    runs = []
    for i in range(max(1, plan.repeats)):
        result = run_e2e(
            ctx.stack,
            ctx.monitor,
            ctx.work_dir,
            ctx.db,
            ctx.config,
            LAYOUT,
            events,
            f"{tag}{i}",
            load=load,
            warmup_seconds=plan.e2e_warmup,
            reset=clear_bench_rows,
        )
        _progress(f"  {tag} run {i + 1}: {result['label']}: {result['rate']:.0f} events/s")
        runs.append(result)
    return median_run(runs)


def _sample_ids(conn: psycopg.Connection[Any], tenant: uuid.UUID, k: int) -> list[str]:
    """``k`` ids of a tenant's events spread over its whole history: one index seek each from
    a random moment between its oldest and newest event."""
    span = conn.execute(
        "SELECT min(created_at), max(created_at) FROM system_events WHERE tenant_id = %s",
        (tenant,),
    ).fetchone()
    if span is None or span[0] is None:
        return []
    lo, hi = span
    rng = random.Random(str(tenant))
    ids: set[str] = set()
    for _ in range(k * 2):
        at = lo + (hi - lo) * rng.random()
        row = conn.execute(
            "SELECT id FROM system_events WHERE tenant_id = %s AND created_at >= %s"
            " ORDER BY created_at LIMIT 1",
            (tenant, at),
        ).fetchone()
        if row is not None:
            ids.add(str(row[0]))
        if len(ids) >= k:
            break
    return sorted(ids, key=lambda _: rng.random())


def _reads(ctx: _Ctx, plan: Plan, tag: str, with_history: bool) -> dict[str, Any]:
    """List page 1 (with its exact total) of the big and typical tenant, each filter set, and
    gets by id: of the bench tenant's own recent events, and of both tenants' history."""
    chosen = [c for c in cases() if c.page == 1]
    engine = make_engine(ctx.db.url, pool_size=1, max_overflow=0)
    try:
        explained = {c.name: explain_case(engine, c, repeats=5) for c in chosen}
    finally:
        engine.dispose()
    ids_wanted = plan.get_requests + plan.list_warmup
    targets = [("recent", E2E_TENANT)]
    if with_history:
        targets += [("big", tenant_id(BIG_TENANT)), ("typical", tenant_id(TYPICAL_TENANT))]
    gets = []
    with psycopg.connect(ctx.db.dsn, autocommit=True) as conn:
        for label, tenant in targets:
            ids = _sample_ids(conn, tenant, ids_wanted)
            if not ids:
                raise BenchError(f"no event of the {label} tenant to get")
            gets.append(
                {
                    "name": f"get:{label}",
                    "method": "GET",
                    "path": f"/system/events/{ids[0]}",
                    "paths": [f"/system/events/{i}" for i in ids],
                    "headers": {
                        "Authorization": f"Bearer {reader_token(ctx.config.jwt_secret, tenant)}"
                    },
                    "concurrency": 1,
                    "count": plan.get_requests,
                    "warmup_count": plan.list_warmup,
                    "expect_status": 200,
                    "max_seconds": 120.0,
                }
            )
    scenarios = list_scenarios(ctx.config, chosen, plan.list_requests, plan.list_warmup) + gets
    api = start_api(ctx.stack, ctx.work_dir, ctx.config, 1, tag=f"reads-{tag}")
    ctx.monitor.watch("api", api.proc.pid)
    try:
        with ctx.monitor.phase(f"history:reads-{tag}") as usage:
            measured = run_load(ctx.stack, ctx.monitor, ctx.work_dir, api.port, scenarios, tag)
    finally:
        ctx.monitor.unwatch(api.proc.pid)
        ctx.stack.stop(api.proc)
    for result in measured:
        if result["ok"] != result["requests"] or result["errors"]:
            raise BenchError(f"{tag} {result['name']}: {result}")
    lists = []
    for case, result in zip(chosen, measured, strict=False):
        info = explained[case.name]
        lists.append(
            {
                "name": case.name,
                "total": info["total"],
                "rows_on_page": info["rows_on_page"],
                "requests": result["requests"],
                "latency_ms": result["latency_ms"],
                "repository_ms_p50": info["repository_ms_p50"],
                "indexes": sorted({i for p in info["plans"] for i in p["indexes"]}),
                "plans": info["plans"],
            }
        )
    got = [
        {
            "name": r["name"],
            "requests": r["requests"],
            "ids": len(s["paths"]),
            "latency_ms": r["latency_ms"],
        }
        for r, s in zip(measured[len(chosen) :], gets, strict=True)
    ]
    return {
        "list": lists,
        "get": got,
        "list_p99_ms": max(x["latency_ms"]["p99"] for x in lists),
        "get_p99_ms": max(x["latency_ms"]["p99"] for x in got),
        "usage": usage,
    }


def measure(ctx: _Ctx, plan: Plan, tag: str, with_history: bool) -> dict[str, Any]:
    _progress(f"{tag}: end to end, single publishes ({plan.single_events:,} events)")
    single = _e2e(ctx, plan, SINGLE, plan.single_events, f"{tag}-single")
    _progress(f"{tag}: end to end, batches ({plan.batch_events:,} events)")
    batched = _e2e(ctx, plan, BATCHED, plan.batch_events, f"{tag}-batched")
    _progress(f"{tag}: list and get")
    reads = _reads(ctx, plan, tag, with_history)
    with psycopg.connect(ctx.db.dsn) as conn:
        row = conn.execute(  # the kept counts: exact, and no scan of the history
            "SELECT coalesce(sum(n), 0) FROM (SELECT tenant_id, n FROM event_counts UNION ALL"
            " SELECT tenant_id, n FROM event_count_changes) c WHERE tenant_id <> %s",
            (E2E_TENANT,),
        ).fetchone()
    assert row is not None
    phase = {
        "history_rows": int(row[0]),
        "single_rate": single["rate"],
        "batched_rate": batched["rate"],
        "list_p99_ms": reads["list_p99_ms"],
        "get_p99_ms": reads["get_p99_ms"],
        "single": single,
        "batched": batched,
        "reads": reads,
    }
    _progress(summary(tag, phase))
    return phase


def summary(label: str, phase: dict[str, Any]) -> str:
    return (
        f"{label}: batched {phase['batched_rate']:.0f} events/s, single "
        f"{phase['single_rate']:.0f} events/s, list p99 {phase['list_p99_ms']:.1f} ms, "
        f"get p99 {phase['get_p99_ms']:.1f} ms ({phase['history_rows']:,} rows of history)"
    )


def headline(results: dict[str, Any]) -> str:
    empty, full = results["empty"], results["history"]
    return (
        f"history: batched {full['batched_rate'] / empty['batched_rate']:.2f} x, "
        f"single {full['single_rate'] / empty['single_rate']:.2f} x, "
        f"list p99 {full['list_p99_ms']:.1f} ms, get p99 {full['get_p99_ms']:.1f} ms "
        f"at {human_rows(results['seed']['rows'])} rows"
    )


def targets(results: dict[str, Any]) -> dict[str, Any]:
    empty, full = results["empty"], results["history"]
    got = {
        "batched_ratio": round(full["batched_rate"] / empty["batched_rate"], 3),
        "single_ratio": round(full["single_rate"] / empty["single_rate"], 3),
        "list_p99_ms": full["list_p99_ms"],
        "get_p99_ms": full["get_p99_ms"],
    }
    return {
        name: {
            "value": got[name],
            "target": (">= " if name.endswith("ratio") else "< ") + str(target),
            "met": got[name] >= target if name.endswith("ratio") else got[name] < target,
        }
        for name, target in TARGETS.items()
    }


def render_markdown(results: dict[str, Any]) -> str:
    seed, empty, full = results["seed"], results["empty"], results["history"]
    meta = results["meta"]
    lines = [
        "# eventbus benchmark: the same measurements with and without history",
        "",
        f"Mode {meta['mode']}, commit {meta['commit']}, {meta['started_at']}; "
        f"{meta['cores']} cores, load average {meta['load_average_at_start']} at start.",
        f"Layout: {LAYOUT.label}; single publishes c={SINGLE.concurrency} "
        f"({results['plan']['single_events']:,} events), batches of {BATCHED.batch} from "
        f"{BATCHED.concurrency} connections ({results['plan']['batch_events']:,} events); "
        f"each rate the median of {results['plan']['repeats']} run(s).",
        "",
        f"History: {seed['rows']:,} events over {seed['days']} day partitions "
        f"({seed['first_day']} .. {seed['last_day']}), {seed['tenants']} tenants "
        f"(the big one {seed['big_tenant_share']:.0%}), {seed['failed_share']:.0%} failed; "
        f"seeded in {seed['seconds']:,.0f} s ({seed['rows_per_s']:,} rows/s, {seed['jobs']} "
        f"day(s) at a time), {seed['table_and_indexes_bytes'] / 2**30:.2f} GiB with indexes "
        f"({seed['bytes_per_row']} bytes a row).",
        "",
        "| | empty store | with history | ratio / target |",
        "|---|---|---|---|",
        f"| end to end, batches of {BATCHED.batch} (events/s) | {empty['batched_rate']:,.0f} | "
        f"{full['batched_rate']:,.0f} | {full['batched_rate'] / empty['batched_rate']:.2f} x "
        "(≥ 0.95) |",
        f"| end to end, single publishes (events/s) | {empty['single_rate']:,.0f} | "
        f"{full['single_rate']:,.0f} | {full['single_rate'] / empty['single_rate']:.2f} x "
        "(≥ 0.95) |",
        f"| `GET /system/events` page 1, slowest case p99 (ms) | {empty['list_p99_ms']:.1f} | "
        f"{full['list_p99_ms']:.1f} | < 20 ms |",
        f"| `GET /system/events/{{id}}`, slowest p99 (ms) | {empty['get_p99_ms']:.1f} | "
        f"{full['get_p99_ms']:.1f} | < 5 ms |",
        "",
        "| request (with history) | total | p50 ms | p99 ms | indexes |",
        "|---|---|---|---|---|",
    ]
    for case in full["reads"]["list"]:
        lines.append(
            f"| list {case['name']} | {case['total']:,} | {case['latency_ms']['p50']:.1f} | "
            f"{case['latency_ms']['p99']:.1f} | {', '.join(case['indexes'])} |"
        )
    for got in full["reads"]["get"]:
        lines.append(
            f"| {got['name']} ({got['ids']} ids) | | {got['latency_ms']['p50']:.1f} | "
            f"{got['latency_ms']['p99']:.1f} | |"
        )
    lines += ["", "```text", *results["lines"], "```", ""]
    return "\n".join(lines)


def _commit() -> str:
    import subprocess

    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    return ""


def run(plan: Plan, work_dir: Path, db_name: str) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()
    monitor = Monitor()
    monitor.start()
    db = Database(db_name)
    results: dict[str, Any] = {
        "meta": {
            "mode": plan.mode,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": _commit(),
            "cores": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "plan": asdict(plan),
        "layout": asdict(LAYOUT),
        "loads": {"single": asdict(SINGLE), "batched": asdict(BATCHED)},
    }
    try:
        redis_proc, broker_url = start_redis(stack, work_dir)
        monitor.watch("redis", redis_proc.pid)
        db.create()
        monitor.watch_found("postgres", db.backends)
        config = BusConfig(
            db.url, broker_url, extra_env={"EVENTBUS_RETENTION_DAYS": str(RETENTION_DAYS)}
        )
        ctx = _Ctx(stack, monitor, work_dir, db, config)
        _progress(f"{plan.mode} run: redis {broker_url}, database {db.name}")
        results["empty"] = measure(ctx, plan, "empty store", with_history=False)
        clear_bench_rows(db)
        with monitor.phase("history:seed") as usage:
            results["seed"] = seed(db, plan.rows, DAYS, plan.jobs)
        results["seed"]["usage"] = usage
        results["history"] = measure(
            ctx, plan, f"with {human_rows(plan.rows)} rows", with_history=True
        )
        results["targets"] = targets(results)
        results["lines"] = [
            summary("empty store", results["empty"]),
            summary(f"with {human_rows(plan.rows)} rows", results["history"]),
            headline(results),
        ]
        results["meta"]["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        stack.stop_all()
        monitor.close()
        with contextlib.suppress(Exception):
            db.drop()
    return results


def write(results: dict[str, Any], outs: Sequence[Path]) -> None:
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str) + "\n")
        out.with_suffix(".md").write_text(render_markdown(results))
        _progress(f"wrote {out} and {out.with_suffix('.md')}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke size: 200k rows, 1 run each")
    parser.add_argument("--rows", type=int, default=None, help=f"default {DEFAULT_ROWS:,}")
    parser.add_argument("--jobs", type=int, default=None, help="days seeded at a time (2)")
    parser.add_argument(
        "--work-dir", type=Path, default=REPO / "bench" / "out", help="logs, Redis data, results"
    )
    parser.add_argument("--database", default=None, help="default: eventbus_bench_history")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rows is not None:
        plan = replace(plan, rows=args.rows)
    if args.jobs is not None:
        plan = replace(plan, jobs=args.jobs)
    db_name = args.database or f"eventbus_bench_history{'_quick' if args.quick else ''}"
    try:
        results = run(plan, args.work_dir, db_name)
    except BenchError as exc:
        print(f"bench-history failed: {exc}", file=sys.stderr)
        return 1
    outs = [args.work_dir / f"results-history{'-quick' if args.quick else ''}.json"]
    if not args.quick and args.rows in (None, DEFAULT_ROWS):
        outs.append(REPO / "bench" / "results-history.json")
    write(results, outs)
    for line in results["lines"]:  # the ratio line last
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
