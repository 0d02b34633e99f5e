"""A whole bus of the suite's own (API, workers, relays on its own Redis and PostgreSQL), the
faults to inject into it, and the count that decides whether anything was lost or doubled.

Processes are real ``eventbus`` subprocesses configured through ``EVENTBUS_*`` variables, as
in production; the ledger they write is described in ``tests/chaos/handlers.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from sqlalchemy import create_engine, text

from bus.auth import Principal, mint_token
from bus.broker.queues import queue_name
from bus.events.ids import new_event_id
from bus.publish import service
from bus.runtime import Runtime
from bus.settings import Environment, Settings
from bus.storage import event_store, partitions
from bus.storage.migrate import upgrade
from tests.chaos.ledger import (
    LEDGER_TABLES,
    LEDGER_TRUNCATE,
    MODULES,
    ORDERED_MODULE,
    POISON_MODULE,
)
from tests.support.processes import BIN, Proc, free_port, settings_env, wait_for
from tests.support.servers import PostgresCluster, RedisServer
from tests.support.tokens import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name("last_run.json")
HANDLERS = "tests.chaos.handlers"
TENANTS = tuple(uuid.UUID(f"{n:08x}-0000-4000-8000-00000000c4a0") for n in range(1, 5))
SERVED = ",".join((*MODULES, POISON_MODULE, ORDERED_MODULE))
FINAL = "status = 'processed' OR (status = 'failed' AND next_attempt_at IS NULL)"
OUT_OF_ORDER = """
WITH c AS (
    SELECT c.id AS done, e.tenant_id, e.entity_id, e.created_at, e.id
    FROM chaos_completions c JOIN system_events e ON e.id = c.event_id
    WHERE e.target_module = :m
)
SELECT count(*) FROM c a WHERE EXISTS (
    SELECT 1 FROM c b WHERE b.tenant_id = a.tenant_id AND b.entity_id = a.entity_id
      AND (b.created_at, b.id) > (a.created_at, a.id) AND b.done < a.done
)
"""
UNSETTLED = (  # what is still to run: the in-flight set's rows with a time to run
    "SELECT q.status, e.retry_count, q.status = 'failed' AS retry, "
    "q.dispatched_at IS NULL AS unsent, count(*) FROM event_queue q "
    "JOIN system_events e ON e.id = q.id AND e.created_at = q.created_at "
    "WHERE q.due_at IS NOT NULL GROUP BY 1, 2, 3, 4"
)

LEDGER_COLUMNS = (
    "id, status, retry_count, next_attempt_at, error_message, event_data->>'expect' AS expect, "
    "(event_data->>'kill_until') IS NOT NULL AS poison"
)

# Quick retries keep a scenario short; the ratios are the production ones.
CHAOS_SETTINGS: dict[str, Any] = {
    "retry_max_attempts": 4,
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 1.0,
    "task_time_limit_seconds": 20,
    "visibility_timeout_seconds": 30,
    "relay_interval_seconds": 0.2,
    "worker_heartbeat_seconds": 1.0,
    "metrics_port": 0,
}


# --- what to publish -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    tenant: uuid.UUID
    body: dict[str, Any]


def plan(
    count: int,
    *,
    seed: int,
    failing: float = 0.01,
    recovering: float = 0.03,
    effect: float = 0.2,
    poison: int = 0,
    slow: int = 0,
    slow_seconds: float = 2.0,
    sleep_after_effect: float = 0.0,
    slow_effects: int = 0,
    poison_module: str = POISON_MODULE,
) -> list[Planned]:
    """``count`` events spread over the modules and tenants, and ``poison`` extra poison events
    (on a module of their own unless ``poison_module`` puts them among the others' batches).

    A ``failing`` share always raises (expected to end failed, attempts spent), a ``recovering``
    share raises on its first attempt only; ``effect`` share performs the outside effect;
    ``slow`` events sleep ``slow_seconds``; ``slow_effects`` events pause
    ``sleep_after_effect`` seconds between their outside effect and their return.
    """
    rng = random.Random(seed)
    planned: list[Planned] = []
    for n in range(count):
        data: dict[str, Any] = {"n": n, "expect": "processed"}
        roll = rng.random()
        if roll < failing:
            data.update(fail_until=99, expect="failed")
        elif roll < failing + recovering:
            data["fail_until"] = 1
        if rng.random() < effect or n < slow_effects:
            data["effect"] = True
        if n < slow_effects:
            data["sleep_after_effect"] = sleep_after_effect
        if n < slow:
            data["sleep"] = slow_seconds
        planned.append(_planned(rng, MODULES[n % len(MODULES)], n, data))
    for n in range(poison):
        data = {"n": count + n, "expect": "failed", "kill_until": 99}
        planned.append(_planned(rng, poison_module, count + n, data))
    rng.shuffle(planned)
    return planned


def plan_ordered(
    count: int, *, seed: int, entities: int, recovering: float = 0.1, slow_effects: int = 0
) -> list[Planned]:
    """``count`` events for the ordered module about ``entities`` entities (of two tenants), in
    the order they are to be published: a ``recovering`` share raises on its first attempt (a
    failure holds its entity until its retry); the first ``slow_effects`` pause 0.3 s after
    their outside effect (the window a kill aims at). None fails for good: it would hold its
    entity until an operator released it."""
    rng = random.Random(seed)
    planned: list[Planned] = []
    for n in range(count):
        data: dict[str, Any] = {"n": n, "expect": "processed", "effect": True}
        if rng.random() < recovering:
            data["fail_until"] = 1
        if n < slow_effects:
            data["sleep_after_effect"] = 0.3
        item = _planned(rng, ORDERED_MODULE, n, data, entity=f"item-{n % entities}")
        planned.append(Planned(TENANTS[n % 2], item.body))
    return planned


def _planned(
    rng: random.Random, module: str, n: int, data: dict[str, Any], entity: str | None = None
) -> Planned:
    return Planned(
        tenant=TENANTS[rng.randrange(len(TENANTS))],
        body={
            "event_type": "chaos_tick",
            "source_module": "chaos",
            "target_module": module,
            "entity_type": "tick",
            "entity_id": entity or f"tick-{n}",
            "event_data": data,
        },
    )


def token_for(tenant: uuid.UUID) -> str:
    return mint_token(
        TEST_SECRET, sub="chaos", tenant_id=tenant, permissions=["manage:system"], ttl_seconds=3600
    )


def ledger_database(admin_url: str, url: str, name: str) -> None:
    """Create database ``name``, migrate it and add the chaos ledger's tables."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(LEDGER_TABLES))
    engine.dispose()


# --- the count -----------------------------------------------------------------------------


POISON_BATCH_SECONDS = 10.0
"""How long after an event's start a poison run in the same process may still be in its batch
(a batch sends its rest on after 5 s: workers.tasks.BATCH_BUDGET_SECONDS)."""


@dataclass
class Counts:
    """What a scenario shows; ``lost`` and ``completed_twice`` must be 0."""

    scenario: str
    injected: str
    holds_by: str
    published: int = 0
    processed: int = 0
    failed_as_scripted: int = 0
    lost: int = 0
    completed_twice: int = 0
    cut_short: int = 0
    cut_by_poison_batchmate: int = 0
    """Runs cut because a poison event of the same batch killed their process after them (the
    batch's transaction rolled back with it; they ran again, their completion committed once)."""
    restarted_after_fault: int = 0
    outside_effect_repeated: int = 0
    """Extra runs of the naive outside effect (its ledger rows beyond the first, per event)."""
    keyed_effect_repeated: int = 0
    unanswered_publishes: int = 0
    """HTTP publishes that got no answer (the API died); some committed nonetheless."""
    unanswered_committed: int = 0
    duplicates_skipped: int = 0
    out_of_order: int = 0
    """Ordered scenarios: events completed after a later event of their entity (must be 0)."""
    seconds: float = 0.0
    detect_seconds: float | None = None
    """Network scenarios: from the fault until the bus noticed it (an error, a reconnect)."""
    recovery_seconds: float | None = None
    """Network scenarios: from the link's return until the cut process worked again."""
    problems: list[str] = field(default_factory=list)

    def record(self) -> None:
        """Add this scenario's figures to ``tests/chaos/last_run.json`` (docs/reliability.md
        is generated from it by ``python -m tests.chaos.report``)."""
        runs: dict[str, Any] = {}
        if RESULTS.exists():
            try:
                runs = json.loads(RESULTS.read_text())
            except ValueError:
                runs = {}
        entry = asdict(self)
        entry["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        runs[self.scenario] = entry
        RESULTS.write_text(json.dumps(runs, indent=2, sort_keys=True) + "\n")

    def check(self) -> None:
        """The suite's assertions, with everything known about a failure in the message."""
        summary = {k: v for k, v in asdict(self).items() if k != "problems"}
        assert self.published >= 2000 or self.scenario.startswith("soak"), summary
        assert self.lost == 0, (summary, self.problems[:20])
        assert self.completed_twice == 0, (summary, self.problems[:20])
        assert self.out_of_order == 0, summary
        assert not self.problems, (summary, self.problems[:20])
        assert self.keyed_effect_repeated == 0, summary


# --- the stack -----------------------------------------------------------------------------


class Stack:
    """One scenario's bus: its own Redis, the suite's PostgreSQL, and the processes it starts."""

    def __init__(
        self,
        pg: PostgresCluster,
        database: str,
        *,
        redis_persistent: bool = False,
        **overrides: Any,
    ) -> None:
        self.pg = pg
        self.redis = self._start_redis(redis_persistent)
        values: dict[str, Any] = {
            "env": Environment.TEST,
            "database_url": pg.url(database),
            "broker_url": self.redis.url,
            "jwt_secret": TEST_SECRET,
            "queue_prefix": "chaos.",
            "handlers": HANDLERS,
            **CHAOS_SETTINGS,
        }
        values.update(overrides)
        self.settings = Settings(**values)
        self.runtime = Runtime(self._local(self.settings))
        self.procs: dict[str, Proc] = {}
        self.pools: dict[str, str] = {}
        self.every_proc: list[Proc] = []
        self.faults: list[float] = []
        self.publishing = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.stopping_hooks: list[Callable[[], None]] = []
        """Held while a batch is published in-process: a PostgreSQL restart waits for it."""
        self.api_port = free_port()
        self.history = "system_events"
        """Where the count reads the events: a scenario that drops history adds its copy."""
        self.started = time.monotonic()
        with self.runtime.engine.begin() as conn:
            conn.execute(text("TRUNCATE system_events"))
            conn.execute(text(LEDGER_TRUNCATE))

    # where things run (the network suite's hosts override these)

    def _start_redis(self, persistent: bool) -> RedisServer:
        return RedisServer(persistent=persistent).start()

    def _local(self, settings: Settings) -> Settings:
        """The settings of the suite's own reads and publishes (the processes' by default)."""
        return settings

    def _argv(self, name: str, argv: list[str]) -> list[str]:
        """The command that runs process ``name``."""
        return argv

    # processes

    def env(self, **extra: str) -> dict[str, str]:
        env = settings_env(self.settings)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env["EVENTBUS_LOG_FORMAT"] = "text"
        env.update(extra)
        return env

    def start_workers(
        self, *names: str, concurrency: int = 1, pool: str = "prefork", modules: str = SERVED
    ) -> None:
        """``eventbus worker`` subprocesses serving every chaos module (or ``modules``),
        started together."""
        for name in names:
            argv = [str(BIN / "eventbus"), "worker", "--pool", pool]
            argv += ["--concurrency", str(concurrency), "--modules", modules, "--loglevel", "INFO"]
            self.procs[name] = Proc(self._argv(name, argv), self.env())
            self.pools[name] = pool
            self.every_proc.append(self.procs[name])
        for name in names:
            self.procs[name].wait_for_line(" ready.", 60)

    def start_relay(self, name: str = "relay", **settings: Any) -> Proc:
        env = self.env(**{f"EVENTBUS_{k.upper()}": str(v) for k, v in settings.items()})
        proc = Proc(self._argv(name, [str(BIN / "eventbus"), "relay", "--loglevel", "INFO"]), env)
        self.procs[name] = proc
        self.every_proc.append(proc)
        proc.wait_for_line("relay started", 30)
        return proc

    def start_api(self, name: str = "api", argv: Sequence[str] | None = None, **env: str) -> Proc:
        command = list(argv or [str(BIN / "eventbus"), "api"])
        command += ["--port", str(self.api_port), "--log-level", "warning"]
        proc = Proc(command, self.env(**env))
        self.procs[name] = proc
        self.every_proc.append(proc)
        wait_for(lambda: self._api_answers(proc), 30, "the API to answer")
        return proc

    def _api_answers(self, proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"the API exited:\n{proc.output[-3000:]}")
        try:
            return httpx.get(f"{self.api_url}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def kill(self, name: str) -> None:
        """SIGKILL a process and all its children (its own process group)."""
        proc = self.procs[name]
        self.faults.append(time.time())
        if proc.popen.poll() is None:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(10)

    def pool_children(self, name: str) -> list[int]:
        pid = self.procs[name].popen.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        return [int(child) for child in children]

    def kill_pool_child(self, name: str) -> bool:
        """SIGKILL one pool process of a worker, as the kernel's OOM killer would."""
        deadline = time.monotonic() + 10  # a pool process killed just before is being replaced
        while not (children := self.pool_children(name)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not children:
            return False
        self.faults.append(time.time())
        try:
            os.kill(random.choice(children), signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def wait_for_effect_in_flight(self, name: str, timeout: float = 30) -> None:
        """Wait until a pool process of worker ``name`` has made an outside effect and not yet
        returned: the window in which a death makes the effect repeat."""

        def in_window() -> bool:
            pids = self.pool_children(name)
            with self.runtime.engine.connect() as conn:
                found = conn.execute(
                    text(
                        "SELECT 1 FROM chaos_ledger l JOIN system_events e ON e.id = l.event_id "
                        "WHERE l.kind = 'effect' AND l.pid = ANY(:pids) "
                        "AND l.at > clock_timestamp() - interval '100 milliseconds' "
                        "AND e.event_data->>'sleep_after_effect' IS NOT NULL"
                    ),
                    {"pids": pids},
                ).first()
            return found is not None

        wait_for(in_window, timeout, f"an outside effect in flight in {name}", interval=0.01)

    def kill_redis(self) -> None:
        self.faults.append(time.time())
        self.redis.kill()

    def start_redis(self) -> None:
        self.redis.start()

    def fault(self) -> None:
        """Note the time of a fault injected by other means."""
        self.faults.append(time.time())

    def stop(self) -> None:
        """SIGKILL whatever is left (the counts are taken): a warm shutdown only costs time.
        A scenario that failed may leave a publisher or a supervisor running: stop them first,
        so they reach nothing of the next scenario's."""
        self.stopping.set()
        for hook in self.stopping_hooks:
            hook()
        for thread in self.threads:
            thread.join(60)
        for proc in self.every_proc:
            if proc.popen.poll() is None:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.stop(signal.SIGKILL, timeout=10)
        self.runtime.close()
        self.redis.stop()

    def supervise(self, *names: str) -> Callable[[], int]:
        """Restart workers ``names`` whenever they die, as systemd or Kubernetes would, until
        the returned function is called; it returns how many restarts there were."""
        done = threading.Event()
        restarts = 0

        def loop() -> None:
            nonlocal restarts
            while not done.wait(0.05):
                for name in names:
                    if self.procs[name].popen.poll() is not None:
                        self.fault()
                        restarts += 1
                        try:
                            self.start_workers(name, pool=self.pools[name])
                        except AssertionError:
                            # It died again before printing " ready." (a restored poison
                            # message can kill it that early under load): the next poll sees
                            # the death and restarts it, counted, as a supervisor would.
                            continue

        thread = in_thread(loop)
        self.threads.append(thread)
        self.stopping_hooks.append(done.set)

        def stop() -> int:
            done.set()
            thread.join(60)
            # A death the loop had no time to see (it was still bringing the other worker up
            # when stopped) is one it would have restarted: counted, so deaths all are.
            unseen = sum(1 for name in names if self.procs[name].popen.poll() is not None)
            return restarts + unseen

        return stop

    # publishing

    def publish_inprocess(
        self, planned: Sequence[Planned], batch: int = 50, rate: float | None = 120.0
    ) -> list[uuid.UUID]:
        """Publish through the service, as the API does (INSERT stamped, send after commit),
        ``batch`` events per commit, at about ``rate`` events a second: near what the workers
        drain, so a backlog does not build up behind the faults."""
        ids: list[uuid.UUID] = []
        started = time.monotonic()
        for start in range(0, len(planned), batch):
            if self.stopping.is_set():
                break  # the scenario is over (it failed): publish nothing into the next one
            if rate:
                ahead = started + start / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            with self.publishing, self.runtime.unit_of_work() as uow:
                for item in planned[start : start + batch]:
                    view = service.publish(
                        uow, self.settings, _principal(item.tenant), None, item.body
                    )
                    ids.append(uuid.UUID(str(view["id"])))
                uow.commit()
        return ids

    def publish_in_background(
        self, planned: Sequence[Planned], rate: float | None = 120.0, batch: int = 50
    ) -> Callable[[], list[uuid.UUID]]:
        """:meth:`publish_inprocess` in a thread; the returned function waits for the ids."""
        ids: list[uuid.UUID] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                ids.extend(self.publish_inprocess(planned, batch=batch, rate=rate))
            except BaseException as exc:
                errors.append(exc)

        thread = in_thread(run)
        self.threads.append(thread)

        def result() -> list[uuid.UUID]:
            thread.join(120)
            if errors:
                raise errors[0]
            assert not thread.is_alive(), "publishing did not finish"
            return ids

        return result

    def insert_unsent(
        self, planned: Sequence[Planned], at: datetime | None = None
    ) -> list[uuid.UUID]:
        """Publish as if the broker refused every send: committed, unstamped, no message.
        ``at``: as if published then (ids naming that time, as the bus makes them)."""
        ids: list[uuid.UUID] = []
        with self.runtime.unit_of_work() as uow:
            for item in planned:
                if at is None:
                    view = service.publish(
                        uow, self.settings, _principal(item.tenant), None, item.body
                    )
                    ids.append(uuid.UUID(str(view["id"])))
                    continue
                row = service.new_event(
                    item.body, self.settings, item.tenant, event_id=new_event_id(at)
                )
                event_store.insert_events(uow.session, [row.values()])
                ids.append(row.id)
            # Committed by hand, not through the unit of work: its sends must never be made.
            uow.session.execute(text("UPDATE event_queue SET dispatched_at = NULL"))
            uow.session.commit()
        return ids

    def homes(self, ids: Iterable[uuid.UUID]) -> set[str]:
        """The partitions these events sit in."""
        sql = "SELECT DISTINCT tableoid::regclass::text FROM system_events WHERE id = ANY(:ids)"
        with self.runtime.engine.connect() as conn:
            return set(conn.execute(text(sql), {"ids": list(ids)}).scalars())

    def partition_names(self) -> list[str]:
        with self.runtime.engine.connect() as conn:
            return [p.name for p in partitions.partitions(conn)]

    def publish_http(
        self,
        planned: Sequence[Planned],
        *,
        concurrency: int = 16,
        at: dict[int, Callable[[], None]] | None = None,
    ) -> HttpOutcome:
        """POST every planned event to the API; ``at[n]`` runs once ``n`` requests were made."""
        return asyncio.run(_publish_http(self.api_url, planned, concurrency, at or {}))

    # waiting and counting

    def out_of_order(self) -> int:
        """Events of the ordered module whose completion committed after that of a later event
        (by commit order: ``created_at``, then id) of the same tenant and entity."""
        with self.runtime.engine.connect() as conn:
            return int(conn.execute(text(OUT_OF_ORDER), {"m": ORDERED_MODULE}).scalar_one())

    def count_where(self, condition: str) -> int:
        """Events matching ``condition``, a constant of this module (never outside input)."""
        sql = f"SELECT count(*) FROM system_events WHERE {condition}"  # noqa: S608
        with self.runtime.engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())

    def wait_processed(self, at_least: int, timeout: float = 60) -> None:
        wait_for(
            lambda: self._safe_count("status = 'processed'") >= at_least,
            timeout,
            f"{at_least} events processed",
            interval=0.1,
        )

    def _safe_count(self, condition: str) -> int:
        try:
            return self.count_where(condition)
        except Exception:
            return -1  # the database is being restarted

    def settle(self, at_least: int, timeout: float = 120) -> None:
        """Wait until every event is final and the queues are empty (duplicates consumed)."""

        def final() -> bool:
            total = self._safe_count("true")
            return total >= at_least and self._safe_count(f"NOT ({FINAL})") == 0

        try:
            wait_for(final, timeout, "every event to be final", interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self._unsettled()}\n{self._tails()}") from None
        served = (*MODULES, POISON_MODULE, ORDERED_MODULE)
        queues = [queue_name(m, self.settings.queue_prefix) for m in served]
        try:
            wait_for(
                lambda: sum(self.queue_depths(queues).values()) == 0,
                30,
                "the queues to drain",
                interval=0.25,
            )
        except AssertionError as exc:
            depths = self.queue_depths(queues)
            raise AssertionError(f"{exc}: {depths}\n{self._tails()}") from None

    def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting on each queue (Redis lists; a stack on another broker overrides)."""
        client = redis.Redis.from_url(self.runtime.settings.broker_url)
        try:
            return {q: int(client.llen(q)) for q in queues}
        finally:
            client.close()

    def _unsettled(self) -> list[Any]:
        with self.runtime.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(UNSETTLED))]

    def _tails(self) -> str:
        return "\n".join(f"--- {n}\n{p.output[-1500:]}" for n, p in self.procs.items())

    def count(
        self,
        scenario: str,
        injected: str,
        holds_by: str,
        *,
        answered: Iterable[uuid.UUID],
        cuts_expected: bool,
        unanswered: int = 0,
    ) -> Counts:
        """Count from the database and the ledger; see :class:`Counts`."""
        counts = Counts(scenario, injected, holds_by, unanswered_publishes=unanswered)
        counts.seconds = round(time.monotonic() - self.started, 1)
        counts.duplicates_skipped = sum(
            p.output.count(" skipped: processed") for p in self.every_proc
        )
        ledger = self._read_ledger()
        counts.published = len(ledger.events)
        answered = set(answered)
        if unanswered:
            counts.unanswered_committed = len(set(ledger.events) - answered)
        missing = answered - set(ledger.events)
        counts.lost += len(missing)
        counts.problems += [f"{e}: answered 201 but not in the database" for e in missing]
        for event_id, row in ledger.events.items():
            self._count_outcome(counts, event_id, row, ledger.completions[event_id])
            self._count_runs(counts, event_id, row, ledger, cuts_expected)
            counts.outside_effect_repeated += max(ledger.effects[event_id] - 1, 0)
        counts.keyed_effect_repeated = 0  # a primary key: the idempotent write cannot repeat
        return counts

    def _read_ledger(self) -> Ledger:
        ledger = Ledger()
        with self.runtime.engine.connect() as conn:
            # the history, or a scenario's copy beside it (a constant: never outside input)
            events = f"SELECT {LEDGER_COLUMNS} FROM {self.history}"  # noqa: S608
            ledger.events = {r.id: r for r in conn.execute(text(events))}
            poison = {event_id for event_id, row in ledger.events.items() if row.poison}
            marks = conn.execute(text("SELECT event_id, attempt, kind, at, pid FROM chaos_ledger"))
            for event_id, attempt, kind, at, pid in marks:
                if kind == "start":
                    ledger.starts.setdefault(event_id, []).append((attempt, at.timestamp(), pid))
                    if event_id in poison:
                        ledger.poison_starts.append((pid, at.timestamp()))
                elif kind == "scripted":
                    ledger.scripted[event_id] += 1
                elif kind == "effect":
                    ledger.effects[event_id] += 1
            for (event_id,) in conn.execute(text("SELECT event_id FROM chaos_completions")):
                ledger.completions[event_id] += 1
        return ledger

    def _count_outcome(self, counts: Counts, event_id: uuid.UUID, row: Any, done: int) -> None:
        """Processed once with its completion, or failed as its script says: else lost."""
        if done > 1:
            counts.completed_twice += 1
            counts.problems.append(f"{event_id}: completed {done} times")
        if row.status == "processed":
            counts.processed += 1
            if done == 0:
                counts.lost += 1
                counts.problems.append(f"{event_id}: processed without a completion")
        elif row.status == "failed" and row.next_attempt_at is None:
            if row.expect == "failed":
                counts.failed_as_scripted += 1
                if row.retry_count != self.settings.retry_max_attempts:
                    counts.problems.append(f"{event_id}: failed after {row.retry_count} attempts")
            else:
                counts.lost += 1
                counts.problems.append(f"{event_id}: failed, expected processed: {row}")
        else:
            counts.lost += 1
            counts.problems.append(f"{event_id}: not final: {row}")
        if row.poison and not (
            row.status == "failed"
            and row.error_message.startswith(("WorkerLostError", "AttemptInterrupted"))
        ):
            counts.problems.append(f"{event_id}: poison ended {row.status}")

    def _count_runs(
        self, counts: Counts, event_id: uuid.UUID, row: Any, ledger: Ledger, cuts_expected: bool
    ) -> None:
        """Attempts that started and neither completed nor failed as scripted: cut short by a
        fault, which must have been injected after they began."""
        runs = ledger.starts.get(event_id, [])
        done = ledger.completions[event_id]
        cut = len(runs) - done - ledger.scripted[event_id]
        if cut < 0:
            counts.problems.append(f"{event_id}: more outcomes than starts")
        counts.cut_short += max(cut, 0)
        ended_cut = row.status != "processed" and row.poison
        counts.restarted_after_fault += max(cut - (1 if ended_cut else 0), 0)
        if cut <= 0 or row.poison:
            return
        # A run that shared its process with a poison run started after it was cut by that
        # poison (its batch rolled back with it): the cut the batch design accepts.
        by_poison = [
            t
            for _, t, pid in runs
            if any(
                p == pid and t <= at <= t + POISON_BATCH_SECONDS for p, at in ledger.poison_starts
            )
        ]
        counts.cut_by_poison_batchmate += min(cut, len(by_poison))
        cut -= len(by_poison)
        if cut <= 0:
            return
        if not cuts_expected:
            counts.problems.append(f"{event_id}: started again with no fault to cut it")
        last_fault = max(self.faults, default=None)
        early = [a for a, t, _ in runs if last_fault is not None and t <= last_fault + 1.0]
        if cut > len(early):
            counts.problems.append(f"{event_id}: cut short after the last fault: {runs}")


StackFactory = Callable[..., Stack]
"""``stack(**settings)``: the chaos suite's fixture making a :class:`Stack`."""


@dataclass
class Ledger:
    """The rows the handlers left, by event id."""

    events: dict[uuid.UUID, Any] = field(default_factory=dict)
    starts: dict[uuid.UUID, list[tuple[int, float, int]]] = field(default_factory=dict)
    """(attempt, when, pid) of each run's start."""
    poison_starts: list[tuple[int, float]] = field(default_factory=list)
    """(pid, when) of each poison run: the process it killed, and when."""
    scripted: Counter[uuid.UUID] = field(default_factory=Counter)
    effects: Counter[uuid.UUID] = field(default_factory=Counter)
    completions: Counter[uuid.UUID] = field(default_factory=Counter)


def _principal(tenant: uuid.UUID) -> Principal:
    return Principal("chaos", tenant, frozenset({"manage:system"}), False, "user")


# --- the HTTP publisher --------------------------------------------------------------------


@dataclass
class HttpOutcome:
    answered: list[uuid.UUID] = field(default_factory=list)
    unanswered: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0


async def _publish_http(
    base_url: str,
    planned: Sequence[Planned],
    concurrency: int,
    at: dict[int, Callable[[], None]],
) -> HttpOutcome:
    outcome = HttpOutcome()
    tokens = {t: {"Authorization": f"Bearer {token_for(t)}"} for t in TENANTS}
    queue: asyncio.Queue[tuple[int, Planned]] = asyncio.Queue()
    for n, item in enumerate(planned):
        queue.put_nowait((n, item))
    lock = asyncio.Lock()
    made = 0
    started = time.monotonic()

    async def one(client: httpx.AsyncClient, item: Planned) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = await client.post(
                    "/system/events", json=item.body, headers=tokens[item.tenant]
                )
            except httpx.ConnectError:
                # Nothing was sent: the API is down (being restarted); try again.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            except httpx.TransportError:
                # Sent, and no answer: it may or may not have been committed.
                outcome.unanswered += 1
                return
            if response.status_code == 201:
                outcome.answered.append(uuid.UUID(response.json()["event"]["id"]))
            else:
                outcome.errors[response.status_code] += 1
            return

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal made
        while not queue.empty():
            _, item = queue.get_nowait()
            async with lock:
                made += 1
                hook = at.pop(made, None)
            if hook is not None:
                await asyncio.to_thread(hook)
            await one(client, item)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=15) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    outcome.seconds = time.monotonic() - started
    return outcome


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread
