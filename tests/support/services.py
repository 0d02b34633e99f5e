"""The machine's services as the tests reach them (PostgreSQL, Redis, RabbitMQ on 127.0.0.1),
databases of a test run's own, and the one maker of a test's :class:`Settings`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

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
