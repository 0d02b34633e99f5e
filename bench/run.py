"""``python -m bench``: stand the stack up, run every phase, write results.json and results.md.

Phases, in order: publish (API alone), bare Celery (the baseline), end to end (API + bus
workers), listing (a million rows), then optionally profiles. Bare Celery and the bus each get
a small search over worker layouts at ``search_events`` events, and the fastest layout of each
is then measured at the full N, so both sides are compared at their best on this machine.
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

from bench.baseline import BareConfig, run_bare
from bench.endtoend import BusLayout, run_e2e
from bench.listing import run_listing
from bench.monitor import Monitor
from bench.procs import REPO, BenchError, Stack
from bench.profiling import run_profiles
from bench.publish import run_publish
from bench.report import headline, render_markdown, targets
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
    listing_rows=1_000_000,
    listing_requests=200,
    listing_warmup=20,
)

QUICK = Plan(
    mode="quick",
    publish_seconds=2.0,
    publish_warmup=0.5,
    publish_concurrency=(1, 16, 64),
    publish_api_workers=(1,),
    e2e_events=500,
    search_events=0,
    e2e_warmup=0.5,
    bare_layouts=(BareConfig("solo", workers=2, concurrency=1, prefetch=4),),
    bus_layouts=(BusLayout(api_workers=1, pool="solo", workers=2, concurrency=1),),
    listing_rows=20_000,
    listing_requests=20,
    listing_warmup=3,
)

T = TypeVar("T")


def search_then_measure(
    name: str,
    layouts: Sequence[T],
    run: Callable[[T, int, str], dict[str, Any]],
    search_events: int,
    final_events: int,
) -> dict[str, Any]:
    """Each layout at ``search_events``, then the fastest at ``final_events``."""
    tried: list[dict[str, Any]] = []
    best = layouts[0]
    if len(layouts) > 1 and search_events > 0:
        for i, layout in enumerate(layouts):
            result = run(layout, search_events, f"search{i}")
            _progress(f"{name} search: {result['label']}: {result['rate']:.0f}/s")
            tried.append(result)
        best = layouts[max(range(len(layouts)), key=lambda i: tried[i]["rate"])]
    final = run(best, final_events, "final")
    _progress(f"{name} final: {final['label']}: {final['rate']:.0f}/s")
    return {"search": tried, "final": final}


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
            k: v for k, v in plan.__dict__.items() if k not in ("bare_layouts", "bus_layouts")
        },
    }


def run(plan: Plan, out: Path, work_dir: Path, db_name: str, profile: bool) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()
    monitor = Monitor()
    monitor.start()
    db = Database(db_name)
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

        publish = {}
        for workers in plan.publish_api_workers:
            result = run_publish(
                stack,
                monitor,
                work_dir,
                db,
                config,
                api_workers=workers,
                concurrencies=plan.publish_concurrency,
                seconds=plan.publish_seconds,
                warmup=plan.publish_warmup,
            )
            publish[f"api_workers={workers}"] = result
            for level, r in result["levels"].items():
                _progress(
                    f"publish API x{workers} {level}: {r['rps']:.0f}/s "
                    f"p50 {r['latency_ms']['p50']:.1f} ms p99 {r['latency_ms']['p99']:.1f} ms"
                )
        results["publish"] = publish

        results["bare_celery"] = search_then_measure(
            "bare Celery",
            plan.bare_layouts,
            lambda layout, n, tag: run_bare(stack, monitor, work_dir, broker_url, layout, n, tag),
            plan.search_events,
            plan.e2e_events,
        )
        results["end_to_end"] = search_then_measure(
            "bus end-to-end",
            plan.bus_layouts,
            lambda layout, n, tag: run_e2e(
                stack,
                monitor,
                work_dir,
                db,
                config,
                layout,
                n,
                tag,
                warmup_seconds=plan.e2e_warmup,
            ),
            plan.search_events,
            plan.e2e_events,
        )
        results["listing"] = run_listing(
            stack,
            monitor,
            work_dir,
            db,
            config,
            rows=plan.listing_rows,
            requests=plan.listing_requests,
            warmup_requests=plan.listing_warmup,
        )
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(render_markdown(results))
    return results


def profile_only(work_dir: Path, db_name: str) -> int:
    """The profiles alone, on a fresh stack: for looking into a slow path between full runs."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()
    monitor = Monitor()
    monitor.start()
    db = Database(db_name)
    try:
        _, broker_url = start_redis(stack, work_dir)
        db.create()
        profiles = run_profiles(stack, monitor, work_dir, db, BusConfig(db.url, broker_url))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop_all()
        monitor.close()
        with contextlib.suppress(Exception):
            db.drop()
    out = work_dir / "profiles.json"
    out.write_text(json.dumps(profiles, indent=1) + "\n")
    _progress(f"wrote {out}")
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
    args = parser.parse_args(argv)
    if args.profile_only:
        return profile_only(args.work_dir, args.database or "eventbus_bench_profile")
    plan = QUICK if args.quick else FULL
    out = args.out or REPO / "bench" / "results.json"
    db_name = args.database or ("eventbus_bench_quick" if args.quick else "eventbus_bench")
    try:
        results = run(plan, out, args.work_dir, db_name, args.profile)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    _progress(f"wrote {out} and {out.with_suffix('.md')}")
    print(results["headline"]["line"], flush=True)
    return 0
