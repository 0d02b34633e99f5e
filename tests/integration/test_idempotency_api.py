"""``Idempotency-Key`` through a real ``eventbus api`` (two uvicorn worker processes): one key
sent at once over many connections stores one event, the answer outlives an API killed with
SIGKILL and started again, and neither an odd body nor a server fault costs the connection."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import text

from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import Proc, eventbus, eventbus_env, free_port
from tests.support.tokens import TokenFactory, auth

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
def port(runtime: Runtime) -> Iterator[int]:
    with runtime.engine.begin() as conn:
        conn.execute(text("TRUNCATE idempotency_keys"))
    yield free_port()


def events_stored(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM system_events")).scalar_one())


def test_one_key_sent_at_once_by_many_stores_one_event_and_outlives_the_api(
    runtime: Runtime, settings: Settings, port: int, token: TokenFactory
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
        assert events_stored(runtime) == 1
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
    assert events_stored(runtime) == 1


def exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a kept-alive connection and read its whole response (status,
    headers, body by Content-Length); a connection the server closed reads as status 0."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def post(tok: str, path: str, body: bytes, key: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {tok}\r\n"
        f"Idempotency-Key: {key}\r\nX-Request-ID: req-{key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_odd_keyed_bodies_and_a_500_keep_the_connection_and_the_headers(
    runtime: Runtime, settings: Settings, port: int, token: TokenFactory
) -> None:
    seed = json.dumps(SEED_PUBLISH_BODY)
    odd = (seed[:-1] + ',"note":1e999,"\\ud800":"\\udfff"}').encode()
    refused = json.dumps({**SEED_PUBLISH_BODY, "entity_id": "db-refuses"}).encode()
    tok = token(system=True)
    # Given a fault only the database knows of (a constraint the API has no rule for)
    with runtime.engine.begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE system_events ADD CONSTRAINT ck_test_refuses "
                "CHECK (entity_id <> 'db-refuses')"
            )
        )
    proc = start_api(settings, port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # When keyed publishes whose bodies hold what JSON cannot write again, and one the
            # database refuses, are sent one after another on one connection
            answers = [
                exchange(sock, post(tok, "/system/events", odd, "odd-1")),
                exchange(
                    sock, post(tok, "/system/events/batch", b'{"events":[%s]}' % odd, "odd-2")
                ),
                exchange(sock, post(tok, "/system/events", refused, "fault")),
                exchange(sock, post(tok, "/system/events", odd, "odd-1")),
            ]
    finally:
        proc.stop()
        with runtime.engine.begin() as conn:
            conn.execute(text("ALTER TABLE system_events DROP CONSTRAINT ck_test_refuses"))
    # Then each is answered on that connection, with its request id and nosniff: the odd
    # bodies as without a key (201, the retry a replay), the fault a 500 in the envelope
    assert [status for status, _, _ in answers] == [201, 201, 500, 201]
    for (_, headers, _), key in zip(answers, ["odd-1", "odd-2", "fault", "odd-1"], strict=True):
        assert headers["x-request-id"] == f"req-{key}"
        assert headers["x-content-type-options"] == "nosniff"
    assert json.loads(answers[2][2]) == {"success": False, "message": "Internal server error"}
    assert answers[3][1]["idempotent-replayed"] == "true"
    assert answers[3][2] == answers[0][2]
