"""/healthz answers while the process lives; /readyz is 200 only with the database and the
broker reachable, else 503 naming what is down. The broker here is a redis-server of the test's
own (the machine's Redis is never stopped)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from anyio import to_thread
from fastapi.testclient import TestClient

from api.app import create_app
from bus.db import make_engine
from bus.runtime import Bus
from tests.chaos.services import RedisServer, free_port
from tests.conftest import make_settings
from tests.ops.support import wait_for

NOT_LISTENING = f"127.0.0.1:{free_port()}"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def client_for(database_url: str, broker_url: str) -> tuple[TestClient, Bus]:
    bus = Bus(make_settings(database_url, broker_url=broker_url))
    return TestClient(create_app(bus=bus), raise_server_exceptions=False), bus


def test_readyz_follows_the_broker_down_and_back(
    database_url: str, redis_server: RedisServer
) -> None:
    client, bus = client_for(database_url, redis_server.url)
    with client:
        # Given both dependencies up
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "success": True,
            "message": "ready",
            "checks": {"database": "up", "broker": "up"},
        }

        # When the broker stops: 503 naming it, quickly; the process is still alive
        redis_server.kill()
        started = time.monotonic()
        down = client.get("/readyz")
        assert time.monotonic() - started < 3
        assert down.status_code == 503
        assert down.json() == {"success": False, "message": "Not ready: broker unreachable"}
        assert client.get("/healthz").status_code == 200

        # When it is back on the same port: ready again
        redis_server.start()
        wait_for(
            lambda: client.get("/readyz").status_code == 200, 10, "readyz never came back to 200"
        )
    bus.close()


def test_readyz_names_the_database_when_it_is_down(redis_server: RedisServer) -> None:
    dead_db = f"postgresql+psycopg://postgres@{NOT_LISTENING}/nothing"
    client, bus = client_for(dead_db, redis_server.url)
    with client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"success": False, "message": "Not ready: database unreachable"}
        assert client.get("/healthz").json() == {"success": True, "message": "ok"}
    bus.close()


def test_readyz_names_both_when_both_are_down() -> None:
    dead_db = f"postgresql+psycopg://postgres@{NOT_LISTENING}/nothing"
    client, bus = client_for(dead_db, f"redis://{NOT_LISTENING}/0")
    with client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["message"] == "Not ready: database and broker unreachable"
    bus.close()


def test_probes_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/healthz", "/readyz", "/metrics"} & set(paths)


def test_probes_answer_while_every_request_thread_and_connection_is_taken(
    database_url: str, redis_server: RedisServer
) -> None:
    # Given an API whose request threads (anyio's default limiter) are all taken, and whose
    # bus holds every connection of its pool (2 here), as one tenant's load can make it
    bus = Bus(make_settings(database_url, broker_url=redis_server.url, api_threads=2))
    bus.engine = make_engine(database_url, pool_size=2, max_overflow=0, pool_timeout=30)
    held = [bus.engine.connect() for _ in range(2)]
    try:
        # When the probes are asked, and a call without a token: each answers at once
        answers = _ask_with_every_request_thread_taken(bus, "/healthz", "/readyz", "/system/events")
    finally:
        for connection in held:
            connection.close()
        bus.close()
    # Then live, ready (its own connection), and the refusal needed no thread either
    assert answers["/healthz"].json() == {"success": True, "message": "ok"}
    assert answers["/readyz"].status_code == 200, answers["/readyz"].text
    assert answers["/system/events"].status_code == 401


def test_a_broker_down_is_503_while_every_request_thread_is_taken(
    database_url: str, redis_server: RedisServer
) -> None:
    bus = Bus(make_settings(database_url, broker_url=redis_server.url, api_threads=2))
    redis_server.kill()
    try:
        answers = _ask_with_every_request_thread_taken(bus, "/readyz")
    finally:
        bus.close()
    assert answers["/readyz"].status_code == 503
    assert answers["/readyz"].json()["message"] == "Not ready: broker unreachable"


def _ask_with_every_request_thread_taken(bus: Bus, *paths: str) -> dict[str, Any]:
    """GET each path, at once, from threads of the test's own while the app's request threads
    are all taken; fails unless all are answered within 3 s (a probe stuck behind requests
    fails the test rather than hang it, and is answered once the threads are back)."""
    answers: dict[str, Any] = {}
    client = TestClient(create_app(bus=bus), raise_server_exceptions=False)
    askers = [
        threading.Thread(target=lambda p=path: answers.update({p: client.get(p)})) for path in paths
    ]
    with client:
        assert client.portal is not None
        borrowers = client.portal.call(_take_every_request_thread)
        try:
            started = time.monotonic()
            for asker in askers:
                asker.start()
            for asker in askers:
                asker.join(5)
            assert time.monotonic() - started < 3, answers
        finally:
            client.portal.call(_give_back, borrowers)
            for asker in askers:
                asker.join(10)
    return answers


async def _take_every_request_thread() -> list[object]:
    limiter = to_thread.current_default_thread_limiter()
    borrowers = [object() for _ in range(int(limiter.total_tokens))]
    for borrower in borrowers:
        await limiter.acquire_on_behalf_of(borrower)
    return borrowers


async def _give_back(borrowers: list[object]) -> None:
    limiter = to_thread.current_default_thread_limiter()
    for borrower in borrowers:
        limiter.release_on_behalf_of(borrower)
