"""``python -m bench``: stand the stack up, run every phase, write results.json and results.md.

Phases, in order: publish (API alone: single publishes, then the batch endpoint), bare Celery
(the baseline), end to end with single publishes at c=64 (API + bus workers), end to end with
the batch endpoint, the scheduler's and webhook delivery's phases (``bench.scheduler``,
``bench.webhooks``), PgQueuer (the second peer), latency at a fixed offered rate (half the
single-publish end-to-end rate), listing (a million rows), then optionally profiles.

Every side gets a small search over its layouts at a search size, and the fastest layout of
each is then measured at the full N ``final_repeats`` times (the median run is the figure), so
each side is compared at its best on this machine. The batched search tries the batch shapes
on the fastest single-publish layout, then the other layouts with the fastest shape. The
machine is shared (two cores, other people's work running): the figures are noisy, and each
phase records how many cores the rest of the machine used meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
import redis

from bench import scheduler, webhooks
from bench.baseline import BareConfig, run_bare
from bench.endtoend import BusLayout, Load, Then, run_e2e
from bench.listing import run_listing
from bench.monitor import Monitor
from bench.pgq import PgqConfig, PgqDatabase, pgq_version, run_pgq
from bench.procs import REPO, BenchError, Stack
from bench.profiling import run_profiles
from bench.publish import run_publish
from bench.report import headline, render_markdown, scheduler_lines, targets, webhook_lines
from bench.stack import BusConfig, Database, start_redis


@dataclass(frozen=True)
class Plan:
    """How big each phase is; ``FULL`` for ``make bench``, ``QUICK`` for the CI smoke test."""

    mode: str
    publish_seconds: float
    publish_warmup: float
    publish_concurrency: tuple[int, ...]
    publish_api_workers: tuple[int, ...]
    e2e_events: int
    search_events: int
    e2e_warmup: float
    bare_layouts: tuple[BareConfig, ...]
    bus_layouts: tuple[BusLayout, ...]
    final_repeats: int
    batch_loads: tuple[Load, ...]
    """Shapes of ``POST /system/events/batch`` load: batch size x connections."""
    batch_events: int
    """N of the batched end to end and of PgQueuer (the same N on both sides)."""
    batch_search_events: int
    pgq_layouts: tuple[PgqConfig, ...]
    fixed_rate_seconds: float
    fixed_rate_fraction: float
    listing_rows: int
    listing_requests: int
    listing_warmup: int


FULL = Plan(
    mode="full",
    publish_seconds=10.0,
    publish_warmup=2.0,
    publish_concurrency=(1, 16, 64),
    publish_api_workers=(1, 2),
    e2e_events=20_000,
    search_events=4_000,
    e2e_warmup=2.0,
    bare_layouts=(
        BareConfig("solo", workers=2, concurrency=1, prefetch=4),
        BareConfig("solo", workers=2, concurrency=1, prefetch=64),
        BareConfig("prefork", workers=1, concurrency=2, prefetch=4),
        BareConfig("prefork", workers=1, concurrency=2, prefetch=64),
        BareConfig("threads", workers=1, concurrency=4, prefetch=16),
    ),
    bus_layouts=(
        BusLayout(api_workers=1, pool="solo", workers=2, concurrency=1),
        BusLayout(api_workers=2, pool="solo", workers=2, concurrency=1),
        BusLayout(api_workers=1, pool="prefork", workers=1, concurrency=2),
        BusLayout(api_workers=2, pool="prefork", workers=1, concurrency=2),
        BusLayout(api_workers=1, pool="threads", workers=1, concurrency=4),
    ),
    final_repeats=3,
    batch_loads=(
        Load(batch=100, concurrency=8),
        Load(batch=250, concurrency=4),
        Load(batch=500, concurrency=2),
        Load(batch=500, concurrency=4),
    ),
    batch_events=50_000,
    batch_search_events=10_000,
    pgq_layouts=(
        # Measured fastest here while writing the bench (5.6k-7.7k jobs/s each, within noise);
        # 8 managers, 2 processes of 4, enqueue batches of 1,000 or 1-4 connections were slower.
        PgqConfig(workers=1, managers=4, batch=250),
        PgqConfig(workers=1, managers=4, batch=500),
        PgqConfig(workers=2, managers=2, batch=250),
        PgqConfig(workers=2, managers=2, batch=100),
        PgqConfig(workers=1, managers=1, batch=500),
    ),
    fixed_rate_seconds=20.0,
    fixed_rate_fraction=0.5,
    listing_rows=1_000_000,
    listing_requests=200,
    listing_warmup=20,
)

QUICK = Plan(
    mode="quick",
    publish_seconds=1.5,
    publish_warmup=0.3,
    publish_concurrency=(1, 16, 64),
    publish_api_workers=(1,),
    e2e_events=500,
    search_events=0,
    e2e_warmup=0.5,
    bare_layouts=(BareConfig("solo", workers=2, concurrency=1, prefetch=4),),
    bus_layouts=(BusLayout(api_workers=1, pool="solo", workers=2, concurrency=1),),
    final_repeats=1,
    batch_loads=(Load(batch=250, concurrency=4),),
    batch_events=2_000,
    batch_search_events=0,
    pgq_layouts=(PgqConfig(workers=1, managers=4, batch=250),),
    fixed_rate_seconds=3.0,
    fixed_rate_fraction=0.5,
    listing_rows=20_000,
    listing_requests=20,
    listing_warmup=3,
)

T = TypeVar("T")


def search(
    name: str,
    layouts: Sequence[T],
    run: Callable[[T, int, str], dict[str, Any]],
    search_events: int,
    tag: str = "search",
) -> tuple[T, list[dict[str, Any]]]:
    """Each layout at ``search_events``; the fastest, and every result."""
    tried: list[dict[str, Any]] = []
    if len(layouts) <= 1 or search_events <= 0:
        return layouts[0], tried
    for i, layout in enumerate(layouts):
        result = run(layout, search_events, f"{tag}{i}")
        _progress(f"{name} search: {result['label']}: {result['rate']:.0f}/s")
        tried.append(result)
    return layouts[max(range(len(layouts)), key=lambda i: tried[i]["rate"])], tried


def measure(
    name: str,
    layout: T,
    run: Callable[[T, int, str], dict[str, Any]],
    events: int,
    repeats: int,
) -> dict[str, Any]:
    """``layout`` at ``events``, ``repeats`` times: the run of median rate, with every rate."""
    runs = []
    for i in range(max(1, repeats)):
        result = run(layout, events, "final" if repeats <= 1 else f"final{i}")
        _progress(f"{name} final: {result['label']}: {result['rate']:.0f}/s")
        runs.append(result)
    return median_run(runs)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median rate (the lower middle of an even count), with every run's rate."""
    ordered = sorted(runs, key=lambda r: r["rate"])
    final = dict(ordered[(len(ordered) - 1) // 2])
    final["repeats"] = [r["rate"] for r in runs]
    return final


def search_then_measure(
    name: str,
    layouts: Sequence[T],
    run: Callable[[T, int, str], dict[str, Any]],
    search_events: int,
    final_events: int,
    repeats: int = 1,
) -> dict[str, Any]:
    """Each layout at ``search_events``, then the fastest at ``final_events``."""
    best, tried = search(name, layouts, run, search_events)
    return {"search": tried, "final": measure(name, best, run, final_events, repeats)}


Shape = tuple[BusLayout, Load]


def search_batched(
    best_layout: BusLayout,
    plan: Plan,
    run: Callable[[Shape, int, str], dict[str, Any]],
) -> tuple[Shape, list[dict[str, Any]]]:
    """The batch shapes on ``best_layout`` (the single publish's), then the fastest shape on
    the plan's other layouts; the fastest (layout, load) and every result."""
    if plan.batch_search_events <= 0:
        return (best_layout, plan.batch_loads[0]), []
    shapes: list[Shape] = [(best_layout, load) for load in plan.batch_loads]
    best, tried = search("bus batched", shapes, run, plan.batch_search_events, "bsearch")
    if len(shapes) == 1:  # `search` measures nothing for a single candidate
        tried = [run(best, plan.batch_search_events, "bsearch0")]
    best_rate = max(r["rate"] for r in tried)
    for i, layout in enumerate(x for x in plan.bus_layouts if x != best_layout):
        result = run((layout, best[1]), plan.batch_search_events, f"lsearch{i}")
        _progress(f"bus batched search: {result['label']}: {result['rate']:.0f}/s")
        tried.append(result)
        if result["rate"] > best_rate:
            best, best_rate = (layout, best[1]), result["rate"]
    return best, tried


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _git(*args: str) -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        # Not stripped: `status --porcelain` lines start with a meaningful space.
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    return ""


def _meta(plan: Plan, db: Database, broker_url: str) -> dict[str, Any]:
    with psycopg.connect(db.dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    client = redis.Redis.from_url(broker_url)
    try:
        redis_version = str(client.info("server").get("redis_version"))
    finally:
        client.close()
    dirty = [line[3:] for line in _git("status", "--porcelain").splitlines()]
    return {
        "mode": plan.mode,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD").strip(),
        # Measured is the working tree: list what differs from the commit (others' work too).
        "uncommitted_paths": [p for p in dirty if not p.startswith(("bench/", "tests/bench/"))],
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "versions": {
            "postgresql": row[0] if row else None,
            "redis": redis_version,
            "pgqueuer": pgq_version(),
            **{
                name: version(name)
                for name in ("celery", "kombu", "fastapi", "uvicorn", "sqlalchemy", "psycopg")
            },
        },
        "layout": (
            "Every process is started by the harness and shares the machine's "
            f"{os.cpu_count()} cores with the others (none pinned): load generator, API, "
            "workers, Redis, PostgreSQL. Each phase's 'usage' gives the cores each side "
            "actually used, and 'other_cores' what the rest of the machine used meanwhile."
        ),
        "load_generator": (
            "asyncio + uvloop raw HTTP/1.1 keep-alive client, one process, one connection "
            "per unit of concurrency, requests pre-encoded"
        ),
        "plan": {
            **{
                k: v
                for k, v in plan.__dict__.items()
                if k not in ("bare_layouts", "bus_layouts", "batch_loads", "pgq_layouts")
            },
            "batch_loads": [load.label for load in plan.batch_loads],
            "pgq_layouts": [layout.label for layout in plan.pgq_layouts],
        },
    }


SINGLE = Load(batch=1, concurrency=64)
"""The headline's load: single publishes from 64 connections."""


@dataclass(frozen=True)
class _Ctx:
    """What every bus phase of a run shares."""

    stack: Stack
    monitor: Monitor
    work_dir: Path
    db: Database
    config: BusConfig

    def bus(
        self, plan: Plan, layout: BusLayout, load: Load, n: int, tag: str, then: Then | None = None
    ) -> dict[str, Any]:
        return run_e2e(
            self.stack,
            self.monitor,
            self.work_dir,
            self.db,
            self.config,
            layout,
            n,
            tag,
            load=load,
            warmup_seconds=plan.e2e_warmup,
            then=then,
        )


def _publish_phase(plan: Plan, ctx: _Ctx) -> dict[str, Any]:
    publish = {}
    for workers in plan.publish_api_workers:
        result = run_publish(
            ctx.stack,
            ctx.monitor,
            ctx.work_dir,
            ctx.db,
            ctx.config,
            api_workers=workers,
            concurrencies=plan.publish_concurrency,
            seconds=plan.publish_seconds,
            warmup=plan.publish_warmup,
            batch_loads=plan.batch_loads,
            batch_events=plan.batch_search_events or plan.batch_events,
        )
        publish[f"api_workers={workers}"] = result
        for level, r in result["levels"].items():
            _progress(
                f"publish API x{workers} {level}: {r['rps']:.0f}/s "
                f"p50 {r['latency_ms']['p50']:.1f} ms p99 {r['latency_ms']['p99']:.1f} ms"
            )
        if not result["batch_endpoint"]["available"]:
            _progress(f"batch endpoint not available: {result['batch_endpoint']['detail']}")
        for level, r in result["batch_levels"].items():
            _progress(
                f"publish API x{workers} {level}: {r['events_per_s']:.0f} events/s "
                f"p99 {r['latency_ms']['p99']:.1f} ms per request"
            )
    return publish


def _batched_phase(
    plan: Plan, ctx: _Ctx, best_layout: BusLayout, endpoint: dict[str, Any]
) -> dict[str, Any]:
    """The batch endpoint end to end, at its best shape; or why it could not run."""
    if not endpoint["available"]:
        return {"available": False, "absent": endpoint["absent"], "detail": endpoint["detail"]}
    best_shape, tried = search_batched(
        best_layout, plan, lambda shape, n, tag: ctx.bus(plan, shape[0], shape[1], n, tag)
    )
    final = measure(
        "bus batched",
        best_shape,
        lambda shape, n, tag: ctx.bus(plan, shape[0], shape[1], n, f"b{tag}"),
        plan.batch_events,
        plan.final_repeats,
    )
    return {"available": True, "search": tried, "final": final}


def _single_and_fixed_rate(plan: Plan, ctx: _Ctx) -> tuple[dict[str, Any], dict[str, Any]]:
    """Single publishes at c=64 (layout search, then the repeated final), then latency at a
    fixed offered rate: ``fixed_rate_fraction`` of the finals' median rate, open loop, on the
    last final's processes (already up and warm, so no start-up is repeated)."""
    best, tried = search(
        "bus end-to-end",
        plan.bus_layouts,
        lambda layout, n, tag: ctx.bus(plan, layout, SINGLE, n, tag),
        plan.search_events,
    )
    runs: list[dict[str, Any]] = []
    repeats = max(1, plan.final_repeats)
    for i in range(repeats):

        def then(result: dict[str, Any], last: bool = i == repeats - 1) -> Any:
            if not last:
                return None
            rates = sorted([*(r["rate"] for r in runs), result["rate"]])
            offered = max(10, round(plan.fixed_rate_fraction * rates[(len(rates) - 1) // 2]))
            count = max(50, round(offered * plan.fixed_rate_seconds))
            return Load(batch=1, concurrency=64, rate=offered), count, "fixed"

        tag = "final" if repeats == 1 else f"final{i}"
        result = ctx.bus(plan, best, SINGLE, plan.e2e_events, tag, then=then)
        _progress(f"bus end-to-end final: {result['label']}: {result['rate']:.0f}/s")
        runs.append(result)
    fixed = runs[-1].pop("then")
    fixed["offered_rate"] = fixed["load"]["rate"]
    fixed["fraction"] = plan.fixed_rate_fraction
    _progress(
        f"fixed rate {fixed['offered_rate']}/s: publish -> processed p50 "
        f"{fixed['latency_ms']['p50']} ms p99 {fixed['latency_ms']['p99']} ms"
    )
    others = [_fixed_rate_on(plan, ctx, layout, fixed) for layout in _latency_layouts(plan, best)]
    fixed["other_layouts"] = others
    return {"search": tried, "final": median_run(runs)}, fixed


def _quarter_rate(
    plan: Plan, ctx: _Ctx, best: BusLayout, results: dict[str, Any]
) -> dict[str, Any]:
    """Latency at a quarter of the single-publish rate (the half is ``fixed_rate``), on the
    layout the bench reports for throughput."""
    half = results["fixed_rate"]
    offered = max(10, round(half["offered_rate"] / 2))
    events = max(50, round(offered * plan.fixed_rate_seconds))
    quarter = _fixed_rate_on(
        plan, ctx, best, {"offered_rate": offered, "fraction": 0.25, "events": events}
    )
    return quarter


def _sched_plan(plan: Plan) -> scheduler.SchedulerPlan:
    return scheduler.QUICK if plan.mode == "quick" else scheduler.FULL


def _hooks_plan(plan: Plan) -> webhooks.WebhookPlan:
    return webhooks.QUICK if plan.mode == "quick" else webhooks.FULL


def _hooks_rate(results: dict[str, Any]) -> int | None:
    """The end-to-end phase's fixed rate, for webhook latency at the same rate."""
    rate = (results.get("fixed_rate") or {}).get("offered_rate")
    return int(rate) if rate else None


def _latency_layouts(plan: Plan, best: BusLayout) -> list[BusLayout]:
    """The layout that was fastest for throughput need not be the one with the lowest latency
    (a prefork pool hands each small message to a child): the same fixed rate is offered to
    the solo layout too, when it is another."""
    return [
        layout
        for layout in plan.bus_layouts
        if layout.pool == "solo" and layout.api_workers == best.api_workers and layout != best
    ][:1]


def _fixed_rate_on(
    plan: Plan, ctx: _Ctx, layout: BusLayout, first: dict[str, Any]
) -> dict[str, Any]:
    """The fixed offered rate of ``first`` on ``layout``, after a short warm-up run on the
    same processes (as the first had its finals)."""
    load = Load(batch=1, concurrency=64, rate=first["offered_rate"])

    def then(_result: dict[str, Any]) -> Any:
        return load, first["events"], "fixed"

    warm = ctx.bus(plan, layout, SINGLE, max(200, plan.search_events), "warm", then=then)
    fixed: dict[str, Any] = warm.pop("then")
    fixed["offered_rate"] = first["offered_rate"]
    fixed["fraction"] = first["fraction"]
    _progress(
        f"fixed rate {fixed['offered_rate']}/s on {layout.label}: publish -> processed p50 "
        f"{fixed['latency_ms']['p50']} ms p99 {fixed['latency_ms']['p99']} ms"
    )
    return fixed


def run(plan: Plan, out: Path, work_dir: Path, db_name: str, profile: bool) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()
    monitor = Monitor()
    monitor.start()
    db = Database(db_name)
    pgq_db = PgqDatabase(f"{db_name}_pgq")
    results: dict[str, Any] = {}
    try:
        redis_proc, broker_url = start_redis(stack, work_dir)
        monitor.watch("redis", redis_proc.pid)
        db.create()
        monitor.watch_found("postgres", db.backends)
        config = BusConfig(db.url, broker_url)
        results["meta"] = _meta(plan, db, broker_url)
        results["meta"]["bus_settings"] = {"EVENTBUS_TASK_EVENTS": config.task_events}
        _progress(f"{plan.mode} run: redis {broker_url}, database {db.name}")

        ctx = _Ctx(stack, monitor, work_dir, db, config)
        results["publish"] = _publish_phase(plan, ctx)
        batch_endpoint = next(iter(results["publish"].values()))["batch_endpoint"]
        results["bare_celery"] = search_then_measure(
            "bare Celery",
            plan.bare_layouts,
            lambda layout, n, tag: run_bare(stack, monitor, work_dir, broker_url, layout, n, tag),
            plan.search_events,
            plan.e2e_events,
            plan.final_repeats,
        )
        results["end_to_end"], results["fixed_rate"] = _single_and_fixed_rate(plan, ctx)
        best_layout = BusLayout(**results["end_to_end"]["final"]["layout"])
        results["fixed_rate_quarter"] = _quarter_rate(plan, ctx, best_layout, results)
        results["end_to_end_batched"] = _batched_phase(plan, ctx, best_layout, batch_endpoint)
        results["scheduler"] = scheduler.run_phases(
            stack, monitor, work_dir, db, config, _sched_plan(plan), best_layout
        )
        results["webhooks"] = webhooks.run_phase(
            stack, monitor, work_dir, db, config, _hooks_plan(plan), _hooks_rate(results)
        )
        pgq_db.create(work_dir, stack)
        monitor.watch_found("postgres_pgq", pgq_db.backends)
        results["pgqueuer"] = search_then_measure(
            "PgQueuer",
            plan.pgq_layouts,
            lambda layout, n, tag: run_pgq(stack, monitor, work_dir, pgq_db, layout, n, tag),
            plan.batch_search_events,
            plan.batch_events,
            plan.final_repeats,
        )
        results["pgqueuer_fixed_rate"] = _pgq_fixed_rates(ctx, pgq_db, results)
        results["listing"] = _listing(plan, work_dir, stack, monitor, db, config)
        if profile:
            results["profiles"] = run_profiles(stack, monitor, work_dir, db, config)
        results["memory"] = {"peak_rss": monitor.peaks(), "per_phase": monitor.phases}
        results["headline"] = headline(results)
        results["targets"] = targets(results)
        results["meta"]["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        stack.stop_all()
        monitor.close()
        with contextlib.suppress(Exception):
            db.drop()
        with contextlib.suppress(Exception):
            pgq_db.drop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(render_markdown(results))
    return results


def _pgq_fixed_rates(ctx: _Ctx, pgq_db: PgqDatabase, results: dict[str, Any]) -> dict[str, Any]:
    """PgQueuer offered the bus's two fixed rates (the same count of jobs), on the layout its
    throughput search chose: enqueue -> done beside the bus's publish -> processed."""
    config = PgqConfig(**results["pgqueuer"]["final"]["config"])
    found: dict[str, Any] = {}
    for key in ("fixed_rate", "fixed_rate_quarter"):
        fixed = results.get(key)
        if not fixed:
            continue
        count = int(fixed.get("events") or round(fixed["offered_rate"] * 20))
        result = run_pgq(
            ctx.stack,
            ctx.monitor,
            ctx.work_dir,
            pgq_db,
            config,
            count,
            f"fixed-{key}",
            rate=float(fixed["offered_rate"]),
        )
        _progress(
            f"PgQueuer at {fixed['offered_rate']}/s: enqueue -> done p50 "
            f"{result['latency_ms']['p50']} ms p99 {result['latency_ms']['p99']} ms"
        )
        found[key] = result
    return found


def _listing(
    plan: Plan, work_dir: Path, stack: Stack, monitor: Monitor, db: Database, config: BusConfig
) -> dict[str, Any]:
    return run_listing(
        stack,
        monitor,
        work_dir,
        db,
        config,
        rows=plan.listing_rows,
        requests=plan.listing_requests,
        warmup_requests=plan.listing_warmup,
    )


def _alone(
    work_dir: Path, db_name: str, phase: Callable[[Stack, Monitor, Database, BusConfig], T]
) -> T | None:
    """One phase on a fresh stack (its own Redis and database, dropped after); None when it
    failed (said on stderr)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()
    monitor = Monitor()
    monitor.start()
    db = Database(db_name)
    try:
        redis_proc, broker_url = start_redis(stack, work_dir)
        monitor.watch("redis", redis_proc.pid)
        db.create()
        monitor.watch_found("postgres", db.backends)
        return phase(stack, monitor, db, BusConfig(db.url, broker_url))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return None
    finally:
        stack.stop_all()
        monitor.close()
        with contextlib.suppress(Exception):
            db.drop()


def profile_only(work_dir: Path, db_name: str) -> int:
    """The profiles alone, on a fresh stack: for looking into a slow path between full runs."""
    profiles = _alone(
        work_dir,
        db_name,
        lambda stack, monitor, db, config: run_profiles(stack, monitor, work_dir, db, config),
    )
    if profiles is None:
        return 1
    out = work_dir / "profiles.json"
    out.write_text(json.dumps(profiles, indent=1) + "\n")
    _progress(f"wrote {out}")
    return 0


def _measured() -> dict[str, Any]:
    """A phase run alone: the commit, when, and the machine's load then."""
    return {
        "commit": _git("rev-parse", "--short", "HEAD").strip(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _write_merged(results: dict[str, Any], out: Path) -> None:
    """Results a phase run alone was merged into, written back (with the headline, targets
    and markdown made again when a full run's results are there)."""
    if "headline" in results:
        results["headline"] = headline(results)
        results["targets"] = targets(results)
        out.with_suffix(".md").write_text(render_markdown(results))
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")


def scheduler_only(plan: Plan, out: Path, work_dir: Path, db_name: str) -> int:
    """Only the scheduler's phases, merged into the results at ``out`` (the other phases'
    figures stay); the E2E layout is the one the results report, else 2 solo workers."""
    results = json.loads(out.read_text()) if out.exists() else {}
    final = results.get("end_to_end", {}).get("final", {})
    layout = BusLayout(**final["layout"]) if "layout" in final else BusLayout(1, "solo", 2, 1)

    def phase(stack: Stack, monitor: Monitor, db: Database, config: BusConfig) -> bool:
        results["scheduler"] = scheduler.run_phases(
            stack, monitor, work_dir, db, config, _sched_plan(plan), layout
        )
        results["scheduler"]["measured"] = _measured()
        return True

    if _alone(work_dir, db_name, phase) is None:
        return 1
    _write_merged(results, out)
    for line in scheduler_lines(results):
        print(line, flush=True)
    return 0


def webhooks_only(plan: Plan, out: Path, work_dir: Path, db_name: str) -> int:
    """Only the webhook phase, merged into the results at ``out`` (the other phases' figures
    stay, the end-to-end ones beside it in the report)."""
    results = json.loads(out.read_text()) if out.exists() else {}

    def phase(stack: Stack, monitor: Monitor, db: Database, config: BusConfig) -> bool:
        results["webhooks"] = webhooks.run_phase(
            stack, monitor, work_dir, db, config, _hooks_plan(plan), _hooks_rate(results)
        )
        results["webhooks"]["measured"] = {"mode": plan.mode, **_measured()}
        return True

    if _alone(work_dir, db_name, phase) is None:
        return 1
    _write_merged(results, out)
    for line in webhook_lines(results):
        print(line, flush=True)
    return 0


def latency_only(plan: Plan, out: Path, work_dir: Path, db_name: str, rate: int | None) -> int:
    """Latency at the fixed offered rate the results at ``out`` record (or ``rate``) and at
    half of it, on the layout they report, on a fresh stack: a probe between full runs (it
    prints, writes nothing)."""
    results = json.loads(out.read_text())
    layout = BusLayout(**results["end_to_end"]["final"]["layout"])
    half = rate or int(results["fixed_rate"]["offered_rate"])

    def phase(stack: Stack, monitor: Monitor, db: Database, config: BusConfig) -> bool:
        ctx = _Ctx(stack, monitor, work_dir, db, config)
        for offered, fraction in ((half, 0.5), (max(10, round(half / 2)), 0.25)):
            events = max(50, round(offered * plan.fixed_rate_seconds))
            first = {"offered_rate": offered, "fraction": fraction, "events": events}
            _fixed_rate_on(plan, ctx, layout, first)
        return True

    return 1 if _alone(work_dir, db_name, phase) is None else 0


def listing_only(plan: Plan, out: Path, work_dir: Path, db_name: str) -> int:
    """The listing phase alone, on a fresh stack, written into the results ``out`` holds (its
    other figures kept): for a listing fix between full runs. Noted in the results' meta."""
    results = json.loads(out.read_text())
    listing = _alone(
        work_dir,
        db_name,
        lambda stack, monitor, db, config: _listing(plan, work_dir, stack, monitor, db, config),
    )
    if listing is None:
        return 1
    results["listing"] = listing
    results["meta"]["listing_rerun"] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD").strip(),
    }
    results["targets"] = targets(results)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(render_markdown(results))
    _progress(f"listing re-run written into {out} and {out.with_suffix('.md')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke size: proves, asserts nothing"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results.json")
    parser.add_argument(
        "--work-dir", type=Path, default=REPO / "bench" / "out", help="logs, Redis data, profiles"
    )
    parser.add_argument(
        "--database", default=None, help="default: eventbus_bench (eventbus_bench_quick)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also record py-spy profiles of API and worker"
    )
    parser.add_argument(
        "--profile-only",
        action="store_true",
        help="only the profiles, into WORK_DIR/profiles.json (no results written)",
    )
    parser.add_argument(
        "--scheduler-only",
        action="store_true",
        help="only the scheduler's phases (fairness, order, broker), into the results (--out)",
    )
    parser.add_argument(
        "--webhooks-only",
        action="store_true",
        help="only the webhook delivery phase (drain, slow endpoint), into the results (--out)",
    )
    parser.add_argument(
        "--listing-only",
        action="store_true",
        help="only the listing phase, written into the existing results (--out)",
    )
    parser.add_argument(
        "--latency-only",
        nargs="?",
        const=0,
        type=int,
        metavar="RATE",
        help="only latency at the results' fixed rate (or RATE/s) and half of it; prints only",
    )
    args = parser.parse_args(argv)
    if args.profile_only:
        return profile_only(args.work_dir, args.database or "eventbus_bench_profile")
    plan = QUICK if args.quick else FULL
    out = args.out or REPO / "bench" / "results.json"
    if args.listing_only:
        return listing_only(plan, out, args.work_dir, args.database or "eventbus_bench_listing")
    if args.latency_only is not None:
        db_name = args.database or "eventbus_bench_latency"
        return latency_only(plan, out, args.work_dir, db_name, args.latency_only or None)
    if args.scheduler_only:
        return scheduler_only(plan, out, args.work_dir, args.database or "eventbus_bench_sched")
    if args.webhooks_only:
        return webhooks_only(plan, out, args.work_dir, args.database or "eventbus_bench_hooks")
    db_name = args.database or ("eventbus_bench_quick" if args.quick else "eventbus_bench")
    try:
        results = run(plan, out, args.work_dir, db_name, args.profile)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    _progress(f"wrote {out} and {out.with_suffix('.md')}")
    # The three ratio lines and the batched run's PostgreSQL line are the run's last output.
    for line in results["headline"]["lines"]:
        print(line, flush=True)
    return 0
