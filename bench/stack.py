"""The services of one run: a Redis of its own, a PostgreSQL database of its own, the API.

Redis is a ``redis-server`` started here on a free port with the broker settings production
uses (AOF ``everysec``, ``noeviction``), so the fsync cost is in the numbers and the machine's
shared Redis is never touched. PostgreSQL is the machine's server, but a database of the
bench's own, created and migrated with ``bus.storage.migrate.upgrade`` and dropped at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import redis

from bench.procs import BIN, LOOPBACK, Proc, Stack, child_env, free_port, http_ok, wait_until

PG_ADMIN_URL = os.environ.get("EVENTBUS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def start_redis(stack: Stack, out_dir: Path) -> tuple[Proc, str]:
    """A redis-server on a free loopback port; returns it and its URL."""
    port = free_port()
    data = out_dir / "redis"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    redis_bin = shutil.which("redis-server") or "redis-server"
    proc = stack.add(
        Proc(
            "redis",
            [
                redis_bin,
                "--port", str(port),
                "--bind", LOOPBACK,
                "--dir", str(data),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--maxmemory-policy", "noeviction",
                "--daemonize", "no",
            ],
            log_dir=out_dir,
        )
    )  # fmt: skip
    url = f"redis://{LOOPBACK}:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        proc.check_alive()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(up, timeout=20, what="redis-server")
    client.close()
    return proc, url


@dataclass
class Database:
    """The bench's own database on the machine's PostgreSQL."""

    name: str
    admin_url: str = PG_ADMIN_URL

    @property
    def url(self) -> str:
        """SQLAlchemy URL, as the bus's settings take it."""
        base = self.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        return f"{base}/{self.name}"

    @property
    def dsn(self) -> str:
        """libpq URL, for psycopg directly."""
        return self.admin_url.rsplit("/", 1)[0] + f"/{self.name}"

    def create(self) -> None:
        """Drop any leftover of an earlier run, create it, migrate it to head."""
        from bus.storage.migrate import upgrade

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}"')
        upgrade(self.url)

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def truncate(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE system_events")

    def backends(self) -> list[psutil.Process]:
        """PostgreSQL backend processes serving this database (read for CPU and RSS only)."""
        marker = f" {self.name} "
        found: list[psutil.Process] = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if cmdline.startswith("postgres:") and marker in cmdline:
                found.append(proc)
        return found


@dataclass
class BusConfig:
    """What every bus process of a run shares: database, broker, secret, queue prefix."""

    database_url: str
    broker_url: str
    queue_prefix: str = "bench."
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    # Celery task events (Flower's task list) are a documented setting; bare Celery sends none
    # by default, so the bus is measured without them too, and the report says so.
    task_events: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    """More ``EVENTBUS_*`` settings for every bus process (``bench.history``: the retention)."""

    def env(self, **extra: str) -> dict[str, str]:
        """Production settings: HS256 with a real secret, handlers of the bench loaded."""
        return child_env(
            {
                "EVENTBUS_ENV": "production",
                "EVENTBUS_DATABASE_URL": self.database_url,
                "EVENTBUS_BROKER_URL": self.broker_url,
                "EVENTBUS_JWT_SECRET": self.jwt_secret,
                "EVENTBUS_QUEUE_PREFIX": self.queue_prefix,
                "EVENTBUS_HANDLERS": "bench.handlers",
                "EVENTBUS_TASK_EVENTS": "true" if self.task_events else "false",
                # Several workers per machine: they cannot all serve /metrics on one port (the
                # counters still run; only the HTTP endpoint is off).
                "EVENTBUS_METRICS_PORT": "0",
                **self.extra_env,
                **extra,
            }
        )


@dataclass(frozen=True)
class Api:
    proc: Proc
    port: int
    workers: int


def start_api(stack: Stack, out_dir: Path, config: BusConfig, workers: int, tag: str) -> Api:
    """``eventbus api`` under uvicorn on a free port, waited for until /healthz answers."""
    port = free_port()
    proc = stack.add(
        Proc(
            f"api-{tag}",
            [
                str(BIN / "eventbus"),
                "api",
                "--host", LOOPBACK,
                "--port", str(port),
                "--workers", str(workers),
                "--log-level", "warning",
            ],
            log_dir=out_dir,
            env=config.env(),
        )
    )  # fmt: skip

    def up() -> bool:
        proc.check_alive()
        return http_ok(port)

    wait_until(up, timeout=60, what=f"the API ({workers} worker(s))", interval=0.1)
    if workers > 1:
        # /healthz answers as soon as one uvicorn worker does; wait for all of them.
        def forked() -> bool:
            proc.check_alive()
            return len(psutil.Process(proc.pid).children()) >= workers

        wait_until(forked, timeout=60, what="the API's worker processes", interval=0.1)
        wait_until(lambda: all(http_ok(port) for _ in range(4 * workers)), timeout=30,
                   what="every API worker", interval=0.2)  # fmt: skip
    return Api(proc, port, workers)


def flush_queues(broker_url: str, prefix: str) -> None:
    """Drop the queues (and kombu's bindings) a phase left behind on the bench's Redis."""
    client = redis.Redis.from_url(broker_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        keys += list(client.scan_iter(match=f"_kombu.binding.{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
