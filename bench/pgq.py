"""The PgQueuer phase: N no-op jobs through PgQueuer on the same PostgreSQL, first enqueue to last
job logged done.

PgQueuer gets a database of its own on the machine's PostgreSQL server (the one the bus's
database lives on), installed with its own ``pgq install`` (durability ``durable``, its default:
logged tables, as the bus's are). Its workers and its enqueuer are processes of their own
(``bench.pgqueuer_peer``), like bare Celery's. Rate: from the enqueuer's first batch to the
last ``successful`` row of ``pgqueuer_log`` (written when PgQueuer deletes a done job from its
queue, in one statement per flushed batch of outcomes); latency: from each job's ``queued``
log row to its ``successful`` one, both ``now()`` of their transactions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.endtoend import cpu_ms_per_event
from bench.monitor import Monitor
from bench.pgqueuer_peer import ENTRYPOINT
from bench.procs import BIN, BenchError, Proc, Stack, child_env, python_argv, wait_until
from bench.stack import PG_ADMIN_URL


@dataclass(frozen=True)
class PgqConfig:
    """One PgQueuer layout: worker processes x queue managers, dequeue and enqueue batches."""

    workers: int
    managers: int
    batch: int
    enqueue_batch: int = 500
    enqueue_concurrency: int = 2

    @property
    def label(self) -> str:
        return (
            f"{self.workers}x worker process, {self.managers} QueueManager(s) each, "
            f"dequeue batch {self.batch}; enqueue batches of {self.enqueue_batch} "
            f"over {self.enqueue_concurrency} connection(s)"
        )


@dataclass
class PgqDatabase:
    """PgQueuer's own database next to the bench's, on the same server."""

    name: str
    admin_url: str = PG_ADMIN_URL

    @property
    def dsn(self) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{self.name}"

    def create(self, out_dir: Path, stack: Stack) -> None:
        """Drop any leftover, create it, and install PgQueuer's schema with ``pgq install``."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}"')
        proc = stack.add(
            Proc(
                "pgq-install",
                [str(BIN / "pgq"), "--pg-dsn", self.dsn, "install"],
                log_dir=out_dir,
                env=child_env({}),
            )
        )
        try:
            code = proc.popen.wait(60)
        finally:
            stack.stop(proc)
        if code != 0:
            raise BenchError(f"pgq install failed:\n{proc.tail()}")

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def truncate(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")

    def backends(self) -> list[psutil.Process]:
        """PostgreSQL backends serving PgQueuer's database (read for CPU and RSS only)."""
        marker = f" {self.name} "
        found: list[psutil.Process] = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if cmdline.startswith("postgres:") and marker in cmdline:
                found.append(proc)
        return found


_DONE = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful' AND entrypoint = %s"
_WAITING = "SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE entrypoint = %s)"

_STATS = """
WITH q AS (
    SELECT job_id, created FROM pgqueuer_log WHERE status = 'queued' AND entrypoint = %(ep)s
), s AS (
    SELECT job_id, created FROM pgqueuer_log WHERE status = 'successful' AND entrypoint = %(ep)s
)
SELECT (SELECT count(*) FROM s),
       (SELECT count(*) FROM pgqueuer_log
            WHERE status IN ('canceled', 'deleted', 'exception', 'failed')
            AND entrypoint = %(ep)s),
       (SELECT extract(epoch FROM min(created)) FROM q),
       (SELECT extract(epoch FROM max(created)) FROM s),
       percentile_cont(ARRAY[0.5, 0.9, 0.99])
           WITHIN GROUP (ORDER BY extract(epoch FROM s.created - q.created)),
       extract(epoch FROM max(s.created - q.created))
FROM q JOIN s USING (job_id)
"""


def _stats(db: PgqDatabase) -> dict[str, Any]:
    with psycopg.connect(db.dsn) as conn:
        row = conn.execute(_STATS, {"ep": ENTRYPOINT}).fetchone()
    assert row is not None
    done, other, first_queued, last_done, pcts, worst = row
    pcts = pcts or [float("nan")] * 3
    return {
        "done": int(done),
        "not_successful": int(other),  # canceled, deleted, exception or failed
        "first_queued_epoch": float(first_queued) if first_queued is not None else None,
        "last_done_epoch": float(last_done) if last_done is not None else None,
        "latency_ms": {
            "p50": round(float(pcts[0]) * 1000, 1),
            "p90": round(float(pcts[1]) * 1000, 1),
            "p99": round(float(pcts[2]) * 1000, 1),
            "max": round(float(worst) * 1000, 1) if worst is not None else None,
        },
    }


def _wait_done(db: PgqDatabase, count: int, procs: list[Proc], enqueuer: Proc) -> None:
    """Poll the log every 20 ms until ``count`` jobs are done; bounded by a 50 jobs/s floor."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:

        def done() -> bool:
            for proc in procs:
                proc.check_alive()
            if enqueuer.popen.poll() not in (None, 0):
                raise BenchError(f"PgQueuer enqueuer failed:\n{enqueuer.tail()}")
            # One probe of the queue table while jobs wait; the log counted only when none does
            # (as the bus's side polls: neither's poll takes CPU from what it measures).
            waiting = conn.execute(_WAITING, (ENTRYPOINT,)).fetchone()
            if waiting is None or waiting[0]:
                return False
            row = conn.execute(_DONE, (ENTRYPOINT,)).fetchone()
            return row is not None and int(row[0]) >= count

        wait_until(done, timeout=60 + count / 50, what=f"{count} PgQueuer jobs", interval=0.02)


def run_pgq(
    stack: Stack,
    monitor: Monitor,
    out_dir: Path,
    db: PgqDatabase,
    config: PgqConfig,
    count: int,
    tag: str,
    rate: float | None = None,
) -> dict[str, Any]:
    """Start the workers, enqueue ``count`` jobs from an enqueuer process, time the drain;
    with ``rate``, the jobs are offered open loop at that rate, one per enqueue, over 16
    connections (the bus's load generator offers its fixed rate over 64)."""
    db.truncate()
    env = child_env({})
    workers: list[Proc] = []
    enqueuer: Proc | None = None
    try:
        ready_files = []
        for i in range(config.workers):
            ready = out_dir / f"pgq-{tag}-worker{i}.ready"
            ready.unlink(missing_ok=True)
            ready_files.append(ready)
            argv = python_argv(
                "bench.pgqueuer_peer",
                "worker",
                db.dsn,
                str(config.managers),
                str(config.batch),
                str(ready),
            )
            proc = stack.add(Proc(f"pgq-{tag}-worker{i}", argv, log_dir=out_dir, env=env))
            workers.append(proc)
            monitor.watch("pgqueuer_workers", proc.pid)

        def all_ready() -> bool:
            for proc in workers:
                proc.check_alive()
            return all(path.exists() for path in ready_files)

        wait_until(all_ready, timeout=60, what="PgQueuer workers", interval=0.1)
        result_path = out_dir / f"pgq-{tag}-enqueuer.json"
        result_path.unlink(missing_ok=True)
        with monitor.phase(f"pgq:{tag}") as usage:
            enqueuer = stack.add(
                Proc(
                    f"pgq-{tag}-enqueuer",
                    python_argv(
                        "bench.pgqueuer_peer",
                        "enqueue",
                        db.dsn,
                        str(count),
                        str(config.enqueue_batch),
                        str(16 if rate else config.enqueue_concurrency),
                        str(result_path),
                        *([str(rate)] if rate else []),
                    ),
                    log_dir=out_dir,
                    env=env,
                )
            )
            monitor.watch("pgqueuer_enqueuer", enqueuer.pid)
            _wait_done(db, count, workers, enqueuer)
            enqueuer.popen.wait(60)
        if enqueuer.popen.returncode != 0:
            raise BenchError(f"PgQueuer enqueuer failed:\n{enqueuer.tail()}")
        sent = json.loads(result_path.read_text())
    finally:
        for proc in [*workers, *([enqueuer] if enqueuer else [])]:
            monitor.unwatch(proc.pid)
            stack.stop(proc)
    stats = _stats(db)
    last_done = stats["last_done_epoch"]
    if last_done is None or stats["done"] < count:
        raise BenchError(f"PgQueuer {tag}: {stats['done']}/{count} jobs done: {stats}")
    elapsed = last_done - sent["first_send_epoch"]
    send_elapsed = sent["last_send_epoch"] - sent["first_send_epoch"]
    if rate:
        return {
            "config": asdict(config),
            "label": config.label,
            "tasks": count,
            "offered_rate": rate,
            "send_lateness_ms": sent["send_lateness_ms"],
            "latency_ms": stats["latency_ms"],
            "not_successful": stats["not_successful"],
            "usage": usage,
        }
    return {
        "config": asdict(config),
        "label": config.label,
        "tasks": count,
        "elapsed_s": round(elapsed, 3),
        "rate": round(count / elapsed, 1),
        "enqueue_rate": round(count / send_elapsed, 1) if send_elapsed > 0 else None,
        "latency_ms": stats["latency_ms"],
        "not_successful": stats["not_successful"],
        "usage": usage,
        "cpu_ms_per_event": cpu_ms_per_event(usage, count),
    }


def pgq_version() -> str:
    from importlib.metadata import version

    return version("pgqueuer")
