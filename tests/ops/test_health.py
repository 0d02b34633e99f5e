"""/healthz answers while the process lives; /readyz is 200 only with the database and the
broker reachable, else 503 naming what is down, or saying the schema is behind (then every
route that needs a table is that 503 too). The broker here is a redis-server of the test's
own (the machine's Redis is never stopped)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from anyio import to_thread
from fastapi.testclient import TestClient

from api.app import create_app
from bus.runtime import Runtime
from bus.storage.db import make_engine
from bus.storage.migrate import upgrade
from tests.support.factories import NO_SUCH_EVENT, SEED_PUBLISH_BODY
from tests.support.processes import free_port, wait_for
from tests.support.servers import RedisServer
from tests.support.services import REDIS_URL, empty_database, make_settings
from tests.support.tokens import TokenFactory, auth, make_token

NOT_LISTENING = f"127.0.0.1:{free_port()}"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def client_for(database_url: str, broker_url: str) -> tuple[TestClient, Runtime]:
    runtime = Runtime(make_settings(database_url, broker_url=broker_url))
    return TestClient(create_app(runtime=runtime), raise_server_exceptions=False), runtime


def test_readyz_follows_the_broker_down_and_back(
    database_url: str, redis_server: RedisServer
) -> None:
    client, runtime = client_for(database_url, redis_server.url)
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
    runtime.close()


def test_readyz_names_the_database_when_it_is_down(redis_server: RedisServer) -> None:
    dead_db = f"postgresql+psycopg://postgres@{NOT_LISTENING}/nothing"
    client, runtime = client_for(dead_db, redis_server.url)
    with client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"success": False, "message": "Not ready: database unreachable"}
        assert client.get("/healthz").json() == {"success": True, "message": "ok"}
    runtime.close()


def test_a_publish_with_the_database_down_answers_503_to_retry(
    redis_server: RedisServer,
) -> None:
    # Given an API whose database cannot be reached
    dead_db = f"postgresql+psycopg://postgres@{NOT_LISTENING}/nothing"
    client, runtime = client_for(dead_db, redis_server.url)
    with client:
        # When a module publishes, and a reader lists
        published = client.post(
            "/system/events", json=SEED_PUBLISH_BODY, headers=auth(make_token())
        )
        listed = client.get("/system/events", headers=auth(make_token()))
    runtime.close()
    # Then both are told to try again, in the seed's envelope: nothing to fix on their side
    for response in (published, listed):
        assert response.status_code == 503, response.text
        assert response.json() == {"success": False, "message": "Database unavailable: retry"}
        assert response.headers["retry-after"] == "1"


def test_readyz_names_both_when_both_are_down() -> None:
    dead_db = f"postgresql+psycopg://postgres@{NOT_LISTENING}/nothing"
    client, runtime = client_for(dead_db, f"redis://{NOT_LISTENING}/0")
    with client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["message"] == "Not ready: database and broker unreachable"
    runtime.close()


def test_probes_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/healthz", "/readyz", "/metrics"} & set(paths)


NOT_CURRENT = {"success": False, "message": "Database schema is not up to date"}


@pytest.fixture
def empty_db() -> Iterator[str]:
    with empty_database() as url:
        yield url


def test_before_migrations_readyz_and_every_table_route_are_503(
    empty_db: str, token: TokenFactory
) -> None:
    # Given an API on a database `eventbus migrate` has not run on
    client, runtime = client_for(empty_db, REDIS_URL)
    writer = auth(token(system=True))
    with client:
        # Then it is alive but not ready, saying why
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == NOT_CURRENT
        # and a request that needs a table is that 503 too, never a 500
        calls = [
            ("POST", "/system/events", writer, SEED_PUBLISH_BODY),
            ("POST", "/system/events", {**writer, "Idempotency-Key": "k"}, SEED_PUBLISH_BODY),
            ("POST", "/system/events/batch", writer, {"events": [SEED_PUBLISH_BODY]}),
            ("GET", "/system/events", writer, None),
            ("GET", f"/system/events/{NO_SUCH_EVENT}", writer, None),
            ("GET", "/system/events/stats", writer, None),
        ]
        for method, path, headers, body in calls:
            response = client.request(method, path, headers=headers, json=body)
            assert (response.status_code, response.json()) == (503, NOT_CURRENT), path
            assert response.headers["x-request-id"]

        # When the migrations run, the same app is ready and publishes
        upgrade(empty_db)
        assert client.get("/readyz").status_code == 200
        assert (
            client.post("/system/events", headers=writer, json=SEED_PUBLISH_BODY).status_code == 201
        )
    runtime.close()


def test_a_database_a_migration_behind_is_not_ready(empty_db: str) -> None:
    upgrade(empty_db, "0006")
    client, runtime = client_for(empty_db, REDIS_URL)
    with client:
        response = client.get("/readyz")
    runtime.close()
    assert (response.status_code, response.json()) == (503, NOT_CURRENT)


def test_a_database_a_newer_release_migrated_is_ready(empty_db: str) -> None:
    # A rolling upgrade migrates first: the release before must stay ready meanwhile
    upgrade(empty_db)
    with psycopg.connect(empty_db.replace("+psycopg", "")) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_a_newer_release'")
    client, runtime = client_for(empty_db, REDIS_URL)
    with client:
        response = client.get("/readyz")
    runtime.close()
    assert response.status_code == 200, response.text


def test_probes_answer_while_every_request_thread_and_connection_is_taken(
    database_url: str, redis_server: RedisServer
) -> None:
    # Given an API whose request threads (anyio's default limiter) are all taken, and whose
    # bus holds every connection of its pool (2 here), as one tenant's load can make it
    runtime = Runtime(make_settings(database_url, broker_url=redis_server.url, api_threads=2))
    runtime.engine = make_engine(database_url, pool_size=2, max_overflow=0, pool_timeout=30)
    held = [runtime.engine.connect() for _ in range(2)]
    try:
        # When the probes are asked, and a call without a token: each answers at once
        answers = _ask_with_every_request_thread_taken(
            runtime, "/healthz", "/readyz", "/system/events"
        )
    finally:
        for connection in held:
            connection.close()
        runtime.close()
    # Then live, ready (its own connection), and the refusal needed no thread either
    assert answers["/healthz"].json() == {"success": True, "message": "ok"}
    assert answers["/readyz"].status_code == 200, answers["/readyz"].text
    assert answers["/system/events"].status_code == 401


def test_a_broker_down_is_503_while_every_request_thread_is_taken(
    database_url: str, redis_server: RedisServer
) -> None:
    runtime = Runtime(make_settings(database_url, broker_url=redis_server.url, api_threads=2))
    redis_server.kill()
    try:
        answers = _ask_with_every_request_thread_taken(runtime, "/readyz")
    finally:
        runtime.close()
    assert answers["/readyz"].status_code == 503
    assert answers["/readyz"].json()["message"] == "Not ready: broker unreachable"


def _ask_with_every_request_thread_taken(runtime: Runtime, *paths: str) -> dict[str, Any]:
    """GET each path, at once, from threads of the test's own while the app's request threads
    are all taken; fails unless all are answered within 3 s (a probe stuck behind requests
    fails the test rather than hang it, and is answered once the threads are back)."""
    answers: dict[str, Any] = {}
    client = TestClient(create_app(runtime=runtime), raise_server_exceptions=False)
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


def test_a_request_that_waits_too_long_for_a_thread_answers_503_to_retry(
    database_url: str, redis_server: RedisServer, token: TokenFactory
) -> None:
    # Given an API whose request threads are all taken (a database so slow every thread waits
    # on it) and which lets a request wait 0.3 s for one
    runtime = Runtime(
        make_settings(
            database_url, broker_url=redis_server.url, api_threads=2, api_wait_seconds=0.3
        )
    )
    client = TestClient(create_app(runtime=runtime), raise_server_exceptions=False)
    try:
        with client:
            assert client.portal is not None
            borrowers = client.portal.call(_take_every_request_thread)
            try:
                # When a list and a keyed publish arrive
                started = time.monotonic()
                listed = client.get("/system/events", headers=auth(token()))
                keyed = {**auth(token()), "Idempotency-Key": "k-busy"}
                published = client.post("/system/events", headers=keyed, json=SEED_PUBLISH_BODY)
                waited = time.monotonic() - started
            finally:
                client.portal.call(_give_back, borrowers)
            # Then both are 503 to retry, after their wait, not a request queued past a
            # client's timeout; nothing was stored, and the retry with the key is
            for answer in (listed, published):
                assert answer.status_code == 503, answer.text
                assert answer.json() == {"success": False, "message": "Server busy: retry"}
                assert answer.headers["retry-after"] == "1"
            assert 0.6 <= waited < 5
            retried = client.post("/system/events", headers=keyed, json=SEED_PUBLISH_BODY)
            assert retried.status_code == 201
            assert "idempotent-replayed" not in retried.headers
    finally:
        runtime.close()
