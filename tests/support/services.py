"""The machine's services as the tests reach them (PostgreSQL, Redis, RabbitMQ on 127.0.0.1),
databases of a test run's own, and the one maker of a test's :class:`Settings`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, text

from bus.settings import Environment, Settings
from tests.support.tokens import TEST_SECRET

PG_ADMIN_URL = os.environ.get("EVENTBUS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EVENTBUS_TEST_REDIS", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("EVENTBUS_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")


def database_url(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the tests' PostgreSQL server."""
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def create_database(name: str) -> str:
    """A new, empty database (dropped first if a crashed run left it); returns its URL."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(name)


def drop_database(name: str) -> None:
    """Drop it whoever is still connected."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


TEST_TABLES = (
    "system_events",
    "event_attempts",
    "module_pauses",
    "tenant_usage",
    "claim_holders",
    "webhook_endpoints",
    "webhook_deliveries",
)
"""The tables every test starts without rows (the ``runtime`` fixture)."""

FILLED_BY_TRIGGERS = ("event_queue", "event_counts", "event_count_changes", "event_outcome_minutes")
"""What the triggers keep from those (migrations 0004, 0007, 0010): the in-flight set, the
counts and their changes, the outcome minutes. A ``TRUNCATE`` of the history or of the attempts
empties them by trigger; a ``DELETE`` of events appends count changes, emptied after it."""

DELETE_AT_MOST = 1000
"""Past this many rows in a table, :func:`empty_tables` truncates instead of deleting."""


def empty_tables(conn: Connection) -> None:
    """Leave :data:`TEST_TABLES` and :data:`FILLED_BY_TRIGGERS` without rows, as
    ``TRUNCATE system_events, event_attempts, module_pauses, tenant_usage`` does, at the cost of
    the rows there are: one query when none holds any, ``DELETE``s for a few, that
    ``TRUNCATE`` for many. A ``TRUNCATE`` of the
    partitioned history makes every partition's files and indexes anew, ~120 ms even when
    empty; the ``DELETE``s of a few rows take a millisecond or two."""
    tables = (*TEST_TABLES, *FILLED_BY_TRIGGERS)
    limit = DELETE_AT_MOST + 1
    # Built from the module's table names only (S608).
    counted = [f"(SELECT count(*) FROM (SELECT FROM {t} LIMIT {limit}) AS r)" for t in tables]  # noqa: S608
    held = conn.execute(text(f"SELECT {', '.join(counted)}")).one()
    if not any(held):
        return
    if max(held) > DELETE_AT_MOST:
        conn.execute(text(f"TRUNCATE {', '.join(TEST_TABLES)}"))  # and, by trigger, the rest
        return
    for table in tables:  # the history first: its DELETE trigger appends count changes
        conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608


@contextmanager
def empty_database() -> Iterator[str]:
    """The URL of a new database ``eventbus migrate`` has not touched (no table, no
    ``alembic_version``), dropped afterwards."""
    name = f"eventbus_test_empty_{uuid.uuid4().hex[:12]}"
    try:
        yield create_database(name)
    finally:
        drop_database(name)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Test settings over ``database_url``, with a queue prefix of their own so queues never mix
    between tests; ``overrides`` replace any field."""
    values: dict[str, Any] = {
        "env": Environment.TEST,
        "database_url": database_url,
        "broker_url": REDIS_URL,
        "jwt_secret": TEST_SECRET,
        "queue_prefix": f"t{uuid.uuid4().hex[:8]}.",
    }
    values.update(overrides)
    return Settings(**values)
