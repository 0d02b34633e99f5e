"""/healthz answers while the process lives; /readyz is 200 only with the database and the
broker reachable, else 503 naming what is down, or saying the schema is behind (then every
route that needs a table is that 503 too). The broker here is a redis-server of the test's
own (the machine's Redis is never stopped)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from bus.runtime import Runtime
from bus.storage.migrate import upgrade
from tests.support.factories import NO_SUCH_EVENT, SEED_PUBLISH_BODY
from tests.support.processes import free_port, wait_for
from tests.support.servers import RedisServer
from tests.support.services import REDIS_URL, empty_database, make_settings
from tests.support.tokens import TokenFactory, auth

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
