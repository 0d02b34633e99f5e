"""The webhook phase (issue 22): events of a module no handler takes, delivered by ``eventbus
worker`` to the tenants' endpoints on a fast local receiver.

* ``drain``: a backlog of N events of :data:`WEBHOOK_MODULE` over two tenants, each tenant with
  one endpoint on the receiver (``tests.support.receiver``, answering 204, logging nothing),
  published through the API in batches while the module is paused; the workers are started and
  answer a ping, then the module is resumed: the clock runs from the resume to the last
  ``processed_at``. Every event must be processed and acknowledged, and the receiver must have
  had N requests. Each layout at the search size, then the fastest ``repeats`` times at N (the
  median run is the figure). CPU per delivery of each process group over the drain.
* ``handler_drain``: the same backlog of the end-to-end phase's module (its no-op Python
  handler, no endpoint) drained the same way on the same layout: webhook deliveries/s against
  handler events/s.
* ``sender_alone``: ``bench/webhooks_sender.py``'s loop (one sender in this process, the same
  receiver): the ceiling of one process's HTTP side.
* ``fixed_rate``: single publishes offered open loop at a fixed rate to running workers:
  ``processed_at - created_at`` of each delivered event.
* ``slow_endpoint``: on running workers, one tenant's backlog alone, then the same backlog with
  the other tenant's, whose endpoint answers after 5 s: both published at once, then the slow
  tenant's first (its requests in flight when the fast tenant's events come). The fast
  tenant's drain time and latency against its own alone: it must not wait for the slow one.

Every figure is read from the database (``processed_at`` is the recorder's commit of the
answer) and the receiver's request count.
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.endtoend import (
    E2E_TENANT,
    BusLayout,
    cpu_ms_per_event,
    start_module_workers,
)
from bench.load import TOKEN_TTL_SECONDS, publish_scenario, reader_token, run_load, system_token
from bench.monitor import Monitor
from bench.names import E2E_EVENT_TYPE, E2E_MODULE
from bench.procs import BenchError, Proc, Stack, wait_until
from bench.scheduler import TENANT_B, publish_batches
from bench.stack import BusConfig, Database, flush_queues, start_api
from bus.auth import mint_token

WEBHOOK_MODULE = "benchhooks"
"""The phase's module: no handler of ``bench.handlers`` takes it, only endpoints do."""
WEBHOOK_EVENT_TYPE = "bench_hook"
ALLOW = {"EVENTBUS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.1/32"}
"""The receiver is on loopback, which the SSRF policy refuses unless listed."""
PATHS = {E2E_TENANT: "/t0", TENANT_B: "/t1"}
"""Each tenant's endpoint: a path of its own on the one receiver."""
SLOW_RUNS = ("alone", "at_once", "slow_first")
"""The slow-endpoint phase's runs: the fast tenant alone; with the slow tenant's backlog, both
published at once; the slow tenant's published first, the fast tenant's right after."""
PUBLISH_BATCH = 1000


@dataclass(frozen=True)
class WebhookPlan:
    events: int
    """N of the drains (half per tenant)."""
    search_events: int
    """Each layout's drain in the search (0: no search, the first layout)."""
    layouts: tuple[BusLayout, ...]
    repeats: int
    sender_runs: int
    fixed_rate: int
    """Events/s offered for the latency run (0: none)."""
    fixed_seconds: float
    slow_events: int
    """Each tenant's backlog in the slow-endpoint phase."""
    slow_delay_s: float


LAYOUTS = (
    BusLayout(api_workers=1, pool="solo", workers=2, concurrency=1, relay=False),
    BusLayout(api_workers=1, pool="prefork", workers=1, concurrency=2, relay=False),
    BusLayout(api_workers=1, pool="threads", workers=1, concurrency=4, relay=False),
)
"""The end-to-end phase's worker layouts (its API processes and relay play no part here)."""

FULL = WebhookPlan(20_000, 5_000, LAYOUTS, 3, 3, 1000, 10.0, 2_000, 5.0)
QUICK = WebhookPlan(2_000, 0, LAYOUTS[:2], 1, 1, 200, 2.0, 300, 2.0)
"""The CI smoke's: no layout search, a 2 s endpoint (the quick bench's budget is short)."""


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] webhooks: {message}", flush=True)


def _bodies(module: str, count: int, prefix: str) -> list[dict[str, Any]]:
    # The end-to-end module's handler takes its one event type only.
    event_type = E2E_EVENT_TYPE if module == E2E_MODULE else WEBHOOK_EVENT_TYPE
    return [
        {
            "event_type": event_type,
            "source_module": "bench",
            "target_module": module,
            "entity_type": "item",
            "entity_id": f"{prefix}-{i}",
            "event_data": {"previous_quantity": 100, "new_quantity": 95, "n": i},
        }
        for i in range(count)
    ]


_ROWS = """
SELECT count(*),
       count(*) FILTER (WHERE status = 'processed'),
       count(*) FILTER (WHERE status = 'failed'),
       sum(retry_count),
       extract(epoch FROM min(created_at)),
       extract(epoch FROM min(processed_at)),
       extract(epoch FROM max(processed_at)),
       percentile_cont(ARRAY[0.5, 0.9, 0.99])
           WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)),
       extract(epoch FROM max(processed_at - created_at))
FROM system_events WHERE target_module = %s AND tenant_id = ANY(%s)
"""


def _ms(seconds: Any) -> float | None:
    return round(float(seconds) * 1000, 1) if seconds is not None else None


class _Hooks:
    """One API for the phase, the receiver, the endpoints; workers started per run."""

    def __init__(
        self,
        stack: Stack,
        monitor: Monitor,
        out_dir: Path,
        db: Database,
        config: BusConfig,
        receiver: Any,
        port: int,
    ) -> None:
        self.stack, self.monitor, self.out_dir, self.db, self.config = (
            stack,
            monitor,
            out_dir,
            db,
            config,
        )
        self.receiver = receiver
        self.port = port
        secret = config.jwt_secret
        self.publishers = {t: system_token(secret, t) for t in PATHS}
        self.admin = mint_token(
            secret, sub="bench-admin", is_system_admin=True, ttl_seconds=TOKEN_TTL_SECONDS
        )
        self.procs: list[Proc] = []

    # --- set-up --------------------------------------------------------------------------------

    def create_endpoints(self) -> None:
        for tenant, path in PATHS.items():
            response = httpx.post(
                f"http://127.0.0.1:{self.port}/system/endpoints",
                headers={"Authorization": f"Bearer {reader_token(self.config.jwt_secret, tenant)}"},
                json={"target_module": WEBHOOK_MODULE, "url": self.receiver.url + path},
                timeout=30,
            )
            if response.status_code != 201:
                raise BenchError(f"endpoint create: {response.status_code} {response.text[:300]}")

    def reset(self) -> None:
        """The rows of earlier runs (endpoints stay)."""
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            conn.execute(
                "TRUNCATE system_events, event_attempts, tenant_usage, module_pauses, "
                "webhook_deliveries"
            )

    def _control(self, module: str, action: str) -> None:
        response = httpx.post(
            f"http://127.0.0.1:{self.port}/system/modules/{module}/{action}",
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=30,
        )
        if response.status_code != 200:
            raise BenchError(f"{action} {module}: {response.status_code} {response.text[:200]}")

    def workers(self, tag: str, module: str, layout: BusLayout) -> list[Proc]:
        started = start_module_workers(
            self.stack, self.monitor, self.out_dir, self.config, f"hooks-{tag}", module, layout
        )
        self.procs += started
        return started

    def stop_workers(self) -> None:
        for proc in reversed(self.procs):
            self.monitor.unwatch(proc.pid)
            self.stack.stop(proc)
        self.procs.clear()

    @contextmanager
    def running(self, tag: str, module: str, layout: BusLayout) -> Iterator[list[Proc]]:
        try:
            yield self.workers(tag, module, layout)
        finally:
            self.stop_workers()

    # --- publishing and reading ---------------------------------------------------------------

    def publish(self, module: str, per_tenant: dict[uuid.UUID, int], prefix: str = "e") -> None:
        """Each tenant's events in batches, the tenants at once (a thread each)."""
        errors: list[BaseException] = []

        def one(tenant: uuid.UUID, count: int) -> None:
            try:
                bodies = _bodies(module, count, f"{prefix}{PATHS[tenant][1:]}")
                publish_batches(self.port, self.publishers[tenant], bodies, batch=PUBLISH_BATCH)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=one, args=item) for item in per_tenant.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def settled(
        self,
        module: str,
        count: int,
        procs: Sequence[Proc],
        tenants: Sequence[uuid.UUID] = tuple(PATHS),
        timeout: float | None = None,
    ) -> None:
        """Until none of ``tenants``' events of ``module`` waits to run (one index probe of the
        in-flight set a poll), then ``count`` of them must be processed."""
        tenant_list = list(tenants)
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:

            def done() -> bool:
                for proc in procs:
                    proc.check_alive()
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM event_queue WHERE target_module = %s "
                    "AND tenant_id = ANY(%s) AND (status = 'pending' OR due_at IS NOT NULL))",
                    (module, tenant_list),
                ).fetchone()
                return row is not None and not row[0]

            wait_until(
                done,
                timeout=timeout or 120 + count / 50,
                what=f"{count} events of {module} settled",
                interval=0.1,
            )
        stats = self.rows(module, tenant_list)
        if stats["processed"] != count:
            raise BenchError(
                f"webhooks: {stats['processed']}/{count} of {module} processed: {stats}"
            )

    def rows(self, module: str, tenants: Sequence[uuid.UUID] = tuple(PATHS)) -> dict[str, Any]:
        with psycopg.connect(self.db.dsn) as conn:
            row = conn.execute(_ROWS, (module, list(tenants))).fetchone()
            acked = conn.execute(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'acknowledged' "
                "AND tenant_id = ANY(%s)",
                (list(tenants),),
            ).fetchone()
        assert row is not None and acked is not None
        rows, processed, failed, retries, first_created, first_done, last_done, pcts, worst = row
        pcts = pcts or [None] * 3
        return {
            "rows": int(rows),
            "processed": int(processed),
            "failed": int(failed),
            "retries": int(retries or 0),
            "acknowledged": int(acked[0]),
            "first_created_epoch": float(first_created) if first_created is not None else None,
            "first_processed_epoch": float(first_done) if first_done is not None else None,
            "last_processed_epoch": float(last_done) if last_done is not None else None,
            "latency_ms": {
                "p50": _ms(pcts[0]),
                "p90": _ms(pcts[1]),
                "p99": _ms(pcts[2]),
                "max": _ms(worst),
            },
        }

    def requests(self) -> int:
        return int(self.receiver.stats()["requests"])

    # --- the drain ----------------------------------------------------------------------------

    def drain(self, layout: BusLayout, count: int, tag: str, module: str) -> dict[str, Any]:
        """``count`` events published while ``module`` is paused, drained from its resume."""
        self.reset()
        self._control(module, "pause")
        half = count // 2
        self.publish(module, {E2E_TENANT: half, TENANT_B: count - half}, prefix=tag)
        spawned = time.time()
        with self.running(tag, module, layout) as procs:
            ready = time.time()
            if self.rows(module)["processed"]:
                raise BenchError(f"webhooks {tag}: events processed while {module} was paused")
            before = self.requests()
            with self.monitor.phase(f"webhooks:{tag}") as usage:
                resumed = time.time()
                self._control(module, "resume")
                self.settled(module, count, procs)
            received = self.requests() - before
        stats = self.rows(module)
        endpoints = module == WEBHOOK_MODULE
        if endpoints and (received < count or stats["acknowledged"] != count):
            raise BenchError(
                f"webhooks {tag}: {received} requests received, {stats['acknowledged']} "
                f"acknowledged, of {count} events"
            )
        elapsed = max(stats["last_processed_epoch"] - resumed, 1e-3)
        what = "deliveries" if endpoints else "handler runs"
        result = {
            "module": module,
            "layout": asdict(layout),
            "label": f"{layout.workers}x {layout.pool} worker c={layout.concurrency}",
            "events": count,
            "elapsed_s": round(elapsed, 3),
            "rate": round(count / elapsed, 1),
            "workers_start_s": round(ready - spawned, 2),
            "first_done_after_resume_s": round(stats["first_processed_epoch"] - resumed, 3),
            "requests_received": received,
            "acknowledged": stats["acknowledged"],
            "processed": stats["processed"],
            "failed": stats["failed"],
            "retries": stats["retries"],
            "usage": usage,
            "cpu_ms_per_event": cpu_ms_per_event(usage, count),
        }
        _progress(
            f"{tag}: {result['label']}: {count} {what} in {elapsed:.2f} s = {result['rate']:.0f}/s"
        )
        return result

    # --- latency at a fixed rate --------------------------------------------------------------

    def fixed_rate(self, layout: BusLayout, rate: int, seconds: float) -> dict[str, Any]:
        """Single publishes of one tenant offered at ``rate``/s to running workers."""
        self.reset()
        count = max(50, round(rate * seconds))
        with self.running("fixed", WEBHOOK_MODULE, layout) as procs:
            self.publish(WEBHOOK_MODULE, {E2E_TENANT: 500, TENANT_B: 500}, prefix="warm")
            self.settled(WEBHOOK_MODULE, 1000, procs)
            self.reset()
            scenario = publish_scenario(
                "hooks-fixed",
                self.publishers[E2E_TENANT],
                WEBHOOK_MODULE,
                WEBHOOK_EVENT_TYPE,
                concurrency=64,
                count=count,
                max_seconds=60 + seconds * 3,
                rate=float(rate),
            )
            with self.monitor.phase("webhooks:fixed") as usage:
                [published] = run_load(
                    self.stack, self.monitor, self.out_dir, self.port, [scenario], "hooks-fixed"
                )
                if published["ok"] != count:
                    raise BenchError(
                        f"webhooks fixed rate: {published['ok']}/{count} publishes answered 201"
                    )
                self.settled(WEBHOOK_MODULE, count, procs, [E2E_TENANT])
        stats = self.rows(WEBHOOK_MODULE, [E2E_TENANT])
        result = {
            "label": f"{layout.workers}x {layout.pool} worker c={layout.concurrency}",
            "offered_rate": rate,
            "events": count,
            "achieved_publish_rps": published["rps"],
            "latency_ms": stats["latency_ms"],
            "retries": stats["retries"],
            "usage": usage,
        }
        lat = stats["latency_ms"]
        _progress(
            f"fixed rate {rate}/s on {result['label']}: publish -> delivered "
            f"p50 {lat['p50']} ms p99 {lat['p99']} ms"
        )
        return result

    # --- one slow endpoint --------------------------------------------------------------------

    def slow_endpoint(self, layout: BusLayout, count: int, delay: float) -> dict[str, Any]:
        """Tenant A's backlog alone; then with tenant B's, whose endpoint answers after
        ``delay``: both published at once, then B's first and A's right after (B's requests
        already in flight when A's events come)."""
        fast, slow = E2E_TENANT, TENANT_B
        result: dict[str, Any] = {
            "events_per_tenant": count,
            "slow_delay_s": delay,
            "layout": f"{layout.workers}x {layout.pool} worker c={layout.concurrency}",
        }
        self.reset()
        with self.running("slow", WEBHOOK_MODULE, layout) as procs:
            self.publish(WEBHOOK_MODULE, {fast: 500, slow: 500}, prefix="warm")
            self.settled(WEBHOOK_MODULE, 1000, procs)
            for run in SLOW_RUNS:
                self.reset()
                try:
                    if run != "alone":
                        self.receiver.set(PATHS[slow], delay=delay)
                    if run == "alone":
                        self.publish(WEBHOOK_MODULE, {fast: count}, prefix=run)
                    elif run == "at_once":
                        self.publish(WEBHOOK_MODULE, {fast: count, slow: count}, prefix=run)
                    else:
                        self.publish(WEBHOOK_MODULE, {slow: count}, prefix=run)
                        self.publish(WEBHOOK_MODULE, {fast: count}, prefix=run)
                    self.settled(WEBHOOK_MODULE, count, procs, [fast], timeout=120 + count)
                    if run != "alone":
                        self.settled(WEBHOOK_MODULE, count, procs, [slow], timeout=120 + count)
                finally:
                    self.receiver.set(PATHS[slow])
                a = self.rows(WEBHOOK_MODULE, [fast])
                part = {
                    "fast_drain_s": round(a["last_processed_epoch"] - a["first_created_epoch"], 3),
                    "fast_latency_ms": a["latency_ms"],
                }
                if run != "alone":
                    b = self.rows(WEBHOOK_MODULE, [slow])
                    part["slow_drain_s"] = round(
                        b["last_processed_epoch"] - b["first_created_epoch"], 3
                    )
                    part["slow_latency_ms"] = b["latency_ms"]
                result[run] = part
                _progress(
                    f"slow endpoint ({delay:.0f} s), {run.replace('_', ' ')}: the fast tenant's "
                    f"{count} drained in {part['fast_drain_s']:.2f} s (p99 "
                    f"{a['latency_ms']['p99']} ms)"
                    + (
                        f"; the slow tenant's in {part['slow_drain_s']:.1f} s"
                        if run != "alone"
                        else ""
                    )
                )
        worst = max(result[run]["fast_drain_s"] for run in SLOW_RUNS[1:])
        result["fast_drain_ratio"] = round(worst / result["alone"]["fast_drain_s"], 2)
        result["fast_waited_for_slow"] = worst >= delay
        return result

    def drop_endpoints(self) -> None:
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE webhook_deliveries")
            conn.execute(
                "DELETE FROM webhook_endpoints WHERE target_module = %s", (WEBHOOK_MODULE,)
            )


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median rate (the lower middle of an even count), with every run's rate."""
    ordered = sorted(runs, key=lambda r: r["rate"])
    final = dict(ordered[(len(ordered) - 1) // 2])
    final["repeats"] = [r["rate"] for r in runs]
    return final


def _repeat(run: Callable[[str], dict[str, Any]], repeats: int, tag: str) -> dict[str, Any]:
    return _median([run(f"{tag}{i}") for i in range(max(1, repeats))])


def sender_alone(receiver_url: str, count: int, runs: int) -> dict[str, Any]:
    """``bench/webhooks_sender.py``'s measurement (one :class:`workers.sender.Sender`, lists of
    200 requests each awaited, every body built and signed) against the phase's receiver."""
    from bench.webhooks_sender import run as run_sender
    from bus.webhooks.urls import UrlPolicy, parse_networks
    from workers.sender import Sender

    sender = Sender(UrlPolicy(parse_networks(ALLOW["EVENTBUS_WEBHOOK_ALLOW_NETWORKS"])))
    try:
        run_sender(sender, receiver_url + "/alone", 1000, 200, "seed")  # warm-up
        found = [
            run_sender(sender, receiver_url + "/alone", count, 200, "seed") for _ in range(runs)
        ]
    finally:
        sender.close()
    median = statistics.median(r["per_second"] for r in found)
    _progress(f"sender alone: {median:.0f} deliveries/s (median of {len(found)})")
    return {"runs": found, "per_second": median, "batch": 200, "format": "seed"}


def run_phase(
    stack: Stack,
    monitor: Monitor,
    out_dir: Path,
    db: Database,
    config: BusConfig,
    plan: WebhookPlan,
    fixed_rate: int | None = None,
) -> dict[str, Any]:
    """Every part of the phase on the run's database and Redis (their rows of the phase's
    modules cleared first); its endpoints dropped after. ``fixed_rate``: the latency run's
    rate instead of the plan's (the end-to-end phase's, to set the two side by side)."""
    from tests.support.receiver import Receiver

    config = dataclasses.replace(config, extra_env={**config.extra_env, **ALLOW})
    monitor.watch_found("postgres", db.backends)
    flush_queues(config.broker_url, config.queue_prefix)
    result: dict[str, Any] = {
        "module": WEBHOOK_MODULE,
        "tenants": len(PATHS),
        "events": plan.events,
        "receiver": "tests.support.receiver (aiohttp + uvloop, 204, nothing logged), one process",
        "bus_settings": {"EVENTBUS_WEBHOOK_CONCURRENCY": "256 (default)"},
    }
    started: list[Proc] = []
    with Receiver(record=False) as receiver:
        assert receiver.proc is not None
        monitor.watch("receiver", receiver.proc.pid)
        try:
            api = start_api(stack, out_dir, config, 1, tag="hooks")
            started.append(api.proc)
            monitor.watch("api", api.proc.pid)
            hooks = _Hooks(stack, monitor, out_dir, db, config, receiver, api.port)
            hooks.create_endpoints()
            try:
                result.update(_measure(hooks, plan, receiver.url, fixed_rate))
            finally:
                hooks.stop_workers()
                hooks.drop_endpoints()
        finally:
            monitor.unwatch(receiver.proc.pid)
            for proc in reversed(started):
                monitor.unwatch(proc.pid)
                stack.stop(proc)
    return result


def _measure(
    hooks: _Hooks, plan: WebhookPlan, receiver_url: str, fixed_rate: int | None
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    tried: list[dict[str, Any]] = []
    best = plan.layouts[0]
    if plan.search_events > 0 and len(plan.layouts) > 1:
        for i, layout in enumerate(plan.layouts):
            tried.append(hooks.drain(layout, plan.search_events, f"search{i}", WEBHOOK_MODULE))
        best = plan.layouts[max(range(len(tried)), key=lambda i: tried[i]["rate"])]
    final = _repeat(
        lambda tag: hooks.drain(best, plan.events, tag, WEBHOOK_MODULE), plan.repeats, "final"
    )
    found["drain"] = {"search": tried, "final": final}
    handler = _repeat(
        lambda tag: hooks.drain(best, plan.events, tag, E2E_MODULE), plan.repeats, "handler"
    )
    found["handler_drain"] = handler
    found["vs_handler"] = round(final["rate"] / handler["rate"], 3)
    found["sender_alone"] = sender_alone(receiver_url, plan.events, plan.sender_runs)
    found["of_sender_alone"] = round(final["rate"] / found["sender_alone"]["per_second"], 3)
    rate = fixed_rate or plan.fixed_rate
    if rate:
        found["fixed_rate"] = hooks.fixed_rate(best, rate, plan.fixed_seconds)
    found["slow_endpoint"] = hooks.slow_endpoint(best, plan.slow_events, plan.slow_delay_s)
    _progress(
        f"{final['rate']:.0f} deliveries/s ({final['label']}, median of "
        f"{len(final['repeats'])}) = {found['vs_handler']:.2f} x the handler's "
        f"{handler['rate']:.0f} events/s, {found['of_sender_alone']:.2f} x the sender alone"
    )
    return found
