"""Shared fixtures: a real PostgreSQL database of the tests' own, clean tables per test,
an app over it, and tokens."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app
from bus.auth import mint_token
from bus.observability import metrics
from bus.runtime import Runtime
from bus.settings import Environment, Settings
from bus.storage.migrate import upgrade

PG_ADMIN_URL = os.environ.get("EVENTBUS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EVENTBUS_TEST_REDIS", "redis://127.0.0.1:6379/0")
TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
TENANT_A = uuid.UUID("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa")
TENANT_B = uuid.UUID("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb")
NO_SUCH_EVENT = "3f0c2a8e-5b1d-4c7e-9a64-1d2e3f4a5b6c"
"""An id no test stores: fixed, so parametrized test ids are the same in every process
(``make check`` splits the tests between two with pytest-xdist)."""


def _database_url(name: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this test run's own, migrated with Alembic, dropped at the end."""
    name = f"eventbus_test_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _database_url(name)
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": Environment.TEST,
        "database_url": database_url,
        "broker_url": REDIS_URL,
        "jwt_secret": TEST_SECRET,
        "queue_prefix": f"t{uuid.uuid4().hex[:8]}.",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for one test: its own queue prefix, so queues never mix between tests."""
    return make_settings(database_url)


@pytest.fixture(autouse=True)
def _fresh_label_budgets() -> Iterator[None]:
    """Each test starts with this process's metric label budgets unspent: earlier tests that
    publish many event types must not turn a later test's labels into ``other``."""
    for budget in (metrics.EVENT_TYPES, metrics.MODULES):
        budget._seen.clear()
    yield


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """A bus over clean tables."""
    instance = Runtime(settings)
    with instance.engine.begin() as conn:
        conn.execute(text("TRUNCATE system_events, event_attempts"))  # and their minutes (trigger)
    yield instance
    instance.close()
    _drop_queues(settings.queue_prefix)


def _drop_queues(prefix: str) -> None:
    """Remove the test's Redis queues and kombu's bindings for them (``_kombu.binding.`` and,
    since kombu 5.7, ``_kombu.binding_permanent.``): one SCAN, a thousand keys a step, as a
    test's teardown must not cost a round trip per ten keys of whatever else Redis holds."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [
            key
            for key in client.scan_iter(match=f"*{prefix}*", count=1000)
            if key.startswith(prefix.encode()) or key.startswith(b"_kombu.binding")
        ]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime), raise_server_exceptions=False) as c:
        yield c


TokenFactory = Callable[..., str]


@pytest.fixture
def token() -> TokenFactory:
    """``token(tenant=TENANT_A, permissions=["manage:system"], admin=False, system=False)``."""

    def make(
        tenant: uuid.UUID | None = TENANT_A,
        permissions: list[str] | None = None,
        *,
        admin: bool = False,
        system: bool = False,
        ttl: int = 3600,
    ) -> str:
        return mint_token(
            TEST_SECRET,
            sub="tester",
            tenant_id=tenant,
            permissions=["manage:system"] if permissions is None else permissions,
            is_system_admin=admin,
            token_type="system" if system else "user",
            ttl_seconds=ttl,
        )

    return make


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


SEED_PUBLISH_BODY = {
    "event_type": "inventory_updated",
    "source_module": "inventory",
    "target_module": "warehouse",
    "entity_type": "inventory_item",
    "entity_id": "item-uuid-1",
    "event_data": {
        "previous_quantity": 100,
        "new_quantity": 95,
        "warehouse_id": "warehouse-uuid-1",
    },
}
