"""The bare-Celery phase: N no-op tasks through the same Redis, from first send to last done."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.bare_celery import QUEUE
from bench.endtoend import cpu_ms_per_event
from bench.monitor import Monitor
from bench.procs import BIN, BenchError, Proc, Stack, child_env, python_argv, wait_until


@dataclass(frozen=True)
class BareConfig:
    """One worker layout for bare Celery."""

    pool: str
    workers: int
    concurrency: int
    prefetch: int

    @property
    def label(self) -> str:
        return f"{self.workers}x {self.pool} c={self.concurrency} prefetch={self.prefetch}"


def _ping_until_ready(broker_url: str, nodes: list[str], timeout: float) -> None:
    """Wait until every worker answers a broadcast ping: only then is it consuming."""
    control = Celery("bench-control", broker=broker_url, set_as_current=False)
    seen: set[str] = set()
    # A connection of its own: kombu's pools are global per URL, closing one would close
    # the pool every other app on this broker uses.
    with control.connection_for_write() as conn:

        def all_answer() -> bool:
            for reply in control.control.ping(destination=nodes, timeout=0.5, connection=conn):
                seen.update(reply)
            return seen >= set(nodes)

        wait_until(all_answer, timeout=timeout, what=f"Celery workers {nodes}", interval=0.1)


def run_bare(
    stack: Stack,
    monitor: Monitor,
    out_dir: Path,
    broker_url: str,
    config: BareConfig,
    count: int,
    tag: str,
) -> dict[str, Any]:
    """Start the workers, send ``count`` tasks from a publisher process, time the drain."""
    counter_key = f"bench:bare:{tag}:done"
    env = child_env(
        {
            "BENCH_BROKER_URL": broker_url,
            "BENCH_COUNTER_KEY": counter_key,
            "BENCH_PREFETCH": str(config.prefetch),
        }
    )
    client = redis.Redis.from_url(broker_url)
    client.delete(counter_key, QUEUE)
    nodes = [f"bare{i}-{tag}@bench" for i in range(config.workers)]
    workers: list[Proc] = []
    publisher: Proc | None = None
    try:
        for i, node in enumerate(nodes):
            argv = [
                str(BIN / "celery"), "-A", "bench.bare_celery", "worker",
                "-Q", QUEUE, "-n", node,
                "--pool", config.pool, "--concurrency", str(config.concurrency),
                "--prefetch-multiplier", str(config.prefetch),
                # Gossip and mingle only slow the start and add chatter between workers.
                "--without-gossip", "--without-mingle",
                "--loglevel", "WARNING",
            ]  # fmt: skip
            proc = stack.add(Proc(f"bare-{tag}-worker{i}", argv, log_dir=out_dir, env=env))
            workers.append(proc)
            monitor.watch("bare_celery_workers", proc.pid)
        _ping_until_ready(broker_url, nodes, timeout=60)
        result_path = out_dir / f"bare-{tag}-publisher.json"
        result_path.unlink(missing_ok=True)
        with monitor.phase(f"bare:{tag}") as usage:
            publisher = stack.add(
                Proc(
                    f"bare-{tag}-publisher",
                    python_argv("bench.bare_celery", "publish", str(count), str(result_path)),
                    log_dir=out_dir,
                    env=env,
                )
            )
            monitor.watch("bare_celery_publisher", publisher.pid)
            done_at = _wait_for_counter(client, counter_key, count, workers, publisher)
            publisher.popen.wait(60)
        if publisher.popen.returncode != 0:
            raise BenchError(f"bare publisher failed:\n{publisher.tail()}")
        sent = json.loads(result_path.read_text())
    finally:
        for proc in [*workers, *([publisher] if publisher else [])]:
            monitor.unwatch(proc.pid)
            stack.stop(proc)
        client.delete(counter_key, QUEUE, f"{QUEUE}.warm")
        client.close()
    elapsed = done_at - sent["first_send_epoch"]
    send_elapsed = sent["last_send_epoch"] - sent["first_send_epoch"]
    return {
        "config": asdict(config),
        "label": config.label,
        "tasks": count,
        "elapsed_s": round(elapsed, 3),
        "rate": round(count / elapsed, 1),
        "send_rate": round(count / send_elapsed, 1) if send_elapsed > 0 else None,
        "usage": usage,
        "cpu_ms_per_event": cpu_ms_per_event(usage, count),
    }


def _wait_for_counter(
    client: redis.Redis, key: str, count: int, workers: list[Proc], publisher: Proc
) -> float:
    """Poll the done-counter every 10 ms; the wall time it reached ``count``.

    Bounded by a generous floor rate (50 tasks/s) so a stuck worker fails the phase.
    """
    deadline = time.monotonic() + 60 + count / 50
    while time.monotonic() < deadline:
        done = int(client.get(key) or 0)
        if done >= count:
            return time.time()
        for proc in workers:
            proc.check_alive()
        if publisher.popen.poll() not in (None, 0):
            raise BenchError(f"bare publisher failed:\n{publisher.tail()}")
        time.sleep(0.01)
    raise BenchError(f"bare Celery: only {client.get(key)!r}/{count} tasks done in time")
