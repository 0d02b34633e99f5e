"""``Idempotency-Key`` through a real ``eventbus api`` (two uvicorn worker processes): one key
sent at once over many connections stores one event, and the answer outlives an API killed
with SIGKILL and started again."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import text

from bus.runtime import Bus
from bus.settings import Settings
from tests.chaos.services import free_port
from tests.conftest import SEED_PUBLISH_BODY, TokenFactory, auth
from tests.ops.support import Proc, eventbus, eventbus_env

STARTUP = 30.0
SENDERS = 8


def start_api(settings: Settings, port: int) -> Proc:
    proc = Proc(
        eventbus("api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"),
        eventbus_env(settings),
    )
    proc.wait_for_output("Application startup complete", STARTUP, count=2)
    return proc


@pytest.fixture
def port(bus: Bus) -> Iterator[int]:
    with bus.engine.begin() as conn:
        conn.execute(text("TRUNCATE idempotency_keys"))
    yield free_port()


def events_stored(bus: Bus) -> int:
    with bus.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM system_events")).scalar_one())


def test_one_key_sent_at_once_by_many_stores_one_event_and_outlives_the_api(
    bus: Bus, settings: Settings, port: int, token: TokenFactory
) -> None:
    base = f"http://127.0.0.1:{port}"
    headers = {**auth(token(system=True)), "Idempotency-Key": "checkout-7f3a"}
    proc = start_api(settings, port)
    try:
        # Given the same keyed publish sent at once over 8 connections, to two processes
        def send(_: int) -> httpx.Response:
            with httpx.Client(base_url=base, timeout=10) as client:
                return client.post("/system/events", headers=headers, json=SEED_PUBLISH_BODY)

        with ThreadPoolExecutor(SENDERS) as pool:
            responses = list(pool.map(send, range(SENDERS)))
        # Then each is the one event's answer or a 409 (its first still in flight)
        assert {r.status_code for r in responses} <= {201, 409}, [r.text for r in responses]
        created = [r for r in responses if r.status_code == 201]
        assert created
        assert len({r.content for r in created}) == 1
        assert len([r for r in created if "idempotent-replayed" not in r.headers]) <= 1
        assert events_stored(bus) == 1
        first = created[0].content
    finally:
        # When the API dies at once (every process of its group) and starts again
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.stop()
    proc = start_api(settings, port)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            retried = client.post("/system/events", headers=headers, json=SEED_PUBLISH_BODY)
    finally:
        proc.stop()
    # Then a retry is answered the same response, and there is still one event
    assert retried.status_code == 201
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.content == first
    assert events_stored(bus) == 1
