"""A worker and a relay started before ``eventbus migrate`` say why in one line and wait;
once the migrations have run they go on, and a published event is processed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from bus.runtime import Runtime
from bus.storage.migrate import NOT_CURRENT, upgrade
from tests.support.processes import BIN, Proc, settings_env
from tests.support.services import empty_database, make_settings
from tests.support.tokens import TokenFactory
from tests.support.workers import (
    FAST_RETRIES,
    HANDLERS,
    WORKER_START_TIMEOUT,
    publish,
    wait_for_status,
)


@pytest.fixture
def empty_db() -> Iterator[str]:
    with empty_database() as url:
        yield url


def test_worker_and_relay_wait_for_the_migrations_then_work(
    empty_db: str, token: TokenFactory
) -> None:
    settings = make_settings(empty_db, handlers=HANDLERS, metrics_port=0, **FAST_RETRIES)
    env = settings_env(settings)
    worker = Proc(
        [str(BIN / "eventbus"), "worker", "--modules", "warehouse", "--pool", "solo"], env
    )
    relay = Proc([str(BIN / "eventbus"), "relay", "--loglevel", "INFO"], env)
    runtime = Runtime(settings)
    try:
        # Given both started on a database without the schema: each says so and waits
        worker.wait_for_output(NOT_CURRENT, WORKER_START_TIMEOUT)
        relay.wait_for_output(NOT_CURRENT, WORKER_START_TIMEOUT)
        assert " ready." not in worker.output  # it consumes nothing yet

        # When the migrations run
        upgrade(empty_db)

        # Then the worker starts consuming and the relay its passes; an event is processed
        worker.wait_for_line(" ready.", WORKER_START_TIMEOUT)
        relay.wait_for_output("database schema is up to date now", WORKER_START_TIMEOUT)
        with TestClient(create_app(runtime=runtime)) as client:
            event = publish(client, token(system=True))
        wait_for_status(runtime, event["id"], "processed", 30)
    finally:
        runtime.close()
        relay.stop()
        worker.stop()
    for proc in (worker, relay):
        # One line said why; none of the errors a pass or a beat meets without tables
        assert proc.output.count(NOT_CURRENT) == 1, proc.output
        assert "does not exist" not in proc.output, proc.output
        assert "relay pass failed" not in proc.output
