"""/healthz answers while the process lives; /readyz is 200 only with the database and the
broker reachable, else 503 naming what is down. The broker here is a redis-server of the test's
own (the machine's Redis is never stopped)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
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
