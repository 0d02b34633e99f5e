"""HTTP edges against a real ``eventbus api`` process (uvicorn, httptools, the guarded protocol
of api/server.py): what a client can do to the server before or around a request.

Raw sockets, so the test sends exactly the bytes it means: an oversized head (whole, or
streamed without end), a head sent too slowly, an idle connection, a body cut mid-way.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from bus.settings import Settings
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import Proc, eventbus, eventbus_env, free_port, wait_for
from tests.support.prometheus import parse, value
from tests.support.services import make_settings
from tests.support.tokens import TokenFactory, auth

HEADER_CAP = 16 * 1024
HEADER_TIMEOUT = 1.5
KEEP_ALIVE = 1
STARTUP = 30.0


@dataclass
class Api:
    proc: Proc
    port: int
    settings: Settings

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[Api]:
    settings = make_settings(
        database_url,
        http_max_header_bytes=HEADER_CAP,
        http_header_timeout_seconds=HEADER_TIMEOUT,
        http_keep_alive_seconds=KEEP_ALIVE,
    )
    port = free_port()
    proc = Proc(eventbus("api", "--host", "127.0.0.1", "--port", str(port)), eventbus_env(settings))
    try:
        proc.wait_for_output("Uvicorn running on", STARTUP)
        yield Api(proc, port, settings)
    finally:
        proc.stop()


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One response off the socket: status, headers (lower-case names), body."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, val = line.partition(":")
        headers[name.strip().lower()] = val.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True once the server closes the connection (EOF) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def envelope(body: bytes) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(body)
    assert set(parsed) == {"success", "message"} and parsed["success"] is False, parsed
    return parsed


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


# --- The head: size and time ------------------------------------------------------------------


def test_a_head_just_under_the_cap_is_served(api: Api) -> None:
    with api.connect() as sock:
        sock.sendall(get("/healthz", f"X-Pad: {'a' * (HEADER_CAP - 200)}\r\n"))
        status, _, body = read_response(sock)
    assert status == 200, body


def test_a_head_over_the_cap_is_431(api: Api) -> None:
    # Given one header of 20 KiB, the head complete in one write
    with api.connect() as sock:
        sock.sendall(get("/system/events", f"X-Pad: {'a' * 20_000}\r\n"))
        status, headers, body = read_response(sock)
        # Then it is refused in the envelope and the connection closed
        assert (status, envelope(body)["message"]) == (431, "Request headers too large")
        assert headers["connection"] == "close"
        assert closed_by_server(sock, 5)


def test_a_head_streamed_without_end_is_cut_at_the_cap(api: Api) -> None:
    # Given a header that never ends, 4 KiB at a time (80 MB were read whole before)
    with api.connect() as sock:
        sock.sendall(b"GET /system/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
        sent = 0
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while sent < 10 * 1024 * 1024:
                sock.sendall(b"a" * 4096)
                sent += 4096
                time.sleep(0.001)
        status, _, body = read_response(sock)
    # Then the server stopped reading within a few chunks past the cap, and said why
    assert sent < HEADER_CAP * 8, sent
    assert (status, envelope(body)["message"]) == (431, "Request headers too large")


def test_many_headers_over_the_cap_are_431(api: Api) -> None:
    pads = "".join(f"X-Pad-{i}: {'b' * 100}\r\n" for i in range(300))
    with api.connect() as sock:
        sock.sendall(get("/healthz", pads))
        status, _, body = read_response(sock)
    assert (status, envelope(body)["message"]) == (431, "Request headers too large")


def test_a_head_sent_too_slowly_is_408(api: Api) -> None:
    # Given a request line and one header, then nothing (a slowloris)
    with api.connect() as sock:
        sock.sendall(b"GET /system/events HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        for _ in range(3):  # trickling bytes does not extend the deadline
            time.sleep(HEADER_TIMEOUT / 4)
            sock.sendall(b"X-Slow: 1\r\n")
        status, _, body = read_response(sock, timeout=HEADER_TIMEOUT * 4)
        elapsed = time.monotonic() - started
        # Then the server answers 408 once the deadline passed, and closes
        assert (status, envelope(body)["message"]) == (408, "Request timeout")
        assert HEADER_TIMEOUT * 0.9 <= elapsed <= HEADER_TIMEOUT + 2.0, elapsed
        assert closed_by_server(sock, 5)


def test_a_connection_that_sends_nothing_is_closed_silently(api: Api) -> None:
    with api.connect() as sock:
        started = time.monotonic()
        assert closed_by_server(sock, HEADER_TIMEOUT + 3)
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9


def test_an_idle_keep_alive_connection_is_closed(api: Api) -> None:
    # Given a connection that got its answer and stays open
    with api.connect() as sock:
        sock.sendall(get("/healthz"))
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection") != "close"
        started = time.monotonic()
        # Then the server closes it after the keep-alive timeout
        assert closed_by_server(sock, KEEP_ALIVE + 3)
        assert time.monotonic() - started >= KEEP_ALIVE * 0.9


def test_a_second_request_on_a_kept_connection_is_served(api: Api) -> None:
    with api.connect() as sock:
        for _ in range(2):
            sock.sendall(get("/healthz"))
            assert read_response(sock)[0] == 200


# --- Response headers ------------------------------------------------------------------------


def test_no_server_header_and_the_security_headers(api: Api, token: TokenFactory) -> None:
    with httpx.Client(base_url=api.base, timeout=10) as client:
        for response in (
            client.get("/system/events", headers=auth(token())),
            client.get("/system/events"),  # an error too
            client.get("/healthz"),
        ):
            assert "server" not in response.headers, response.headers
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["cache-control"] == "no-store"
            assert "date" in response.headers


def test_a_trailing_slash_is_a_404_without_location(api: Api, token: TokenFactory) -> None:
    with httpx.Client(base_url=api.base, timeout=10) as client:
        response = client.get("/system/events/", headers={**auth(token()), "Host": "evil.test"})
    assert (response.status_code, response.json()) == (
        404,
        {"success": False, "message": "Not Found"},
    )
    assert "location" not in response.headers


# --- A client that goes away -----------------------------------------------------------------


def five_hundreds(api: Api) -> float:
    with httpx.Client(base_url=api.base, timeout=10) as client:
        samples = parse(client.get("/metrics").text)
    return value(samples, "eventbus_http_request_duration_seconds_count", status="500")


def test_a_client_that_disconnects_mid_body_is_no_500(api: Api, token: TokenFactory) -> None:
    # Given a publish whose body stops a third of the way, then the connection closes
    before = five_hundreds(api)
    lines_before = len(api.proc.lines)
    body = json.dumps(SEED_PUBLISH_BODY).encode()
    with api.connect() as sock:
        sock.sendall(
            b"POST /system/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {token()}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body[: len(body) // 3]
        )
        time.sleep(0.3)
    # Then the API logs it at INFO, with no ERROR line and no 500 in the metrics
    api.proc.wait_for_output("client disconnected before its request was read", 10)
    records = api.proc.json_lines()[lines_before:]
    assert [r for r in records if r.get("level") in ("error", "critical")] == []
    wait_for(lambda: "499" in metrics_text(api), 10, "the 499 is counted")
    assert five_hundreds(api) == before


def metrics_text(api: Api) -> str:
    with httpx.Client(base_url=api.base, timeout=10) as client:
        return client.get("/metrics").text
