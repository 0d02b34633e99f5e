"""Every fixture the suites share, declared here only and built from :mod:`tests.support`:
a real PostgreSQL database of the run's own, settings, clean tables per test, an app over them,
tokens, and real workers. A suite may add fixtures of its own; none imports another's conftest.

A test's settings come from one fixture, ``settings``; a suite or a module changes them by
overriding ``settings_overrides`` (a dict of fields), never ``settings`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from bus.observability import metrics
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage.migrate import upgrade
from tests.support.processes import Proc
from tests.support.queues import drop_queues
from tests.support.services import create_database, drop_database, empty_tables, make_settings
from tests.support.tokens import TokenFactory, auth, make_token
from tests.support.workers import WorkerFactory, create_effects_table, run_worker

SERIAL = (
    # fault injection and load: processes killed on cue, counts of restarts; load generators
    "chaos/",
    "faults/",
    "load/",
    "hostile/test_tenant_load.py",  # p99 budgets while one tenant loads the API
    "integration/test_history_migration.py",  # a million rows migrated within 120 s (~80 s)
    # bounds within a few times what they measure, which a busy machine stretches
    "hostile/test_http_edges.py",  # the header timeout's window: 0.9 x 1.5 s to 1.5 s + 2 s
    "integration/test_dev.py",  # processed within a second
    "ops/test_health.py",  # a probe answers within 3 s with the broker gone
    "ops/test_metrics_api.py",  # a scrape within 3 s with the database gone
    # counts the worker's log lines once the dead letters are there, logged just after them
    "hostile/test_broker.py",
)
"""Files (under ``tests/``) whose tests are marked ``serial``: ``make test`` runs them one at a
time, alone, after the others ran in three processes (``pytest -n 3``). Elsewhere a wait is
bounded many times over what it waits for (an event a running worker processes: within 5 s)."""

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.relative_to(_TESTS).as_posix().startswith(SERIAL):
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this test run's own, migrated with Alembic, dropped at the end; made only
    when a test asks for it (unit tests never do)."""
    name = f"eventbus_test_{os.getpid()}"
    url = create_database(name)
    upgrade(url)
    yield url
    drop_database(name)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The fields a suite or module changes in its tests' settings (none here)."""
    return {}


@pytest.fixture
def settings(database_url: str, settings_overrides: dict[str, Any]) -> Settings:
    """Settings for one test: its own queue prefix, so queues never mix between tests."""
    return make_settings(database_url, **settings_overrides)


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
        # events and their attempts, with the in-flight set, counts and outcome minutes the
        # triggers keep; the scheduler's paused modules and tenants' usage
        empty_tables(conn)
    yield instance
    instance.close()
    drop_queues(settings.queue_prefix)


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def token() -> TokenFactory:
    """``token(tenant=TENANT_A, permissions=["manage:system"], admin=False, system=False)``."""
    return make_token


@pytest.fixture
def h(token: TokenFactory) -> dict[str, str]:
    """The headers of a manage:system user of tenant A."""
    return auth(token())


@pytest.fixture
def effects(database_url: str) -> None:
    """The table the test handlers write to, empty for the test."""
    create_effects_table(database_url)


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[WorkerFactory]:
    """``start_worker(modules="warehouse", pool="prefork", concurrency=2, worker_settings=...)``:
    an ``eventbus worker`` subprocess, returned once it consumes; stopped after the test."""
    started: list[Proc] = []

    def start(
        modules: str | None = None,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        worker_settings: Settings | None = None,
    ) -> Proc:
        proc = run_worker(worker_settings or settings, modules, pool=pool, concurrency=concurrency)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
