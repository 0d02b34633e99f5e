"""Issue 9's input rules, one test per rule, each asserting the exact status and message: what a
hostile or sloppy client sends through the app (in-process; tests/hostile/test_http_edges.py
covers what only the server process sees)."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from bus.auth import Principal
from bus.events.schemas import (
    LIST_PARAMS,
    MAX_ERROR_MESSAGE,
    STRING_FIELDS,
    ListQuery,
    parse_json_body,
)
from bus.read import listing
from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.envelope import assert_envelope
from tests.support.factories import (
    NO_SUCH_EVENT,
    SEED_PUBLISH_BODY,
    event_values,
    make_event,
    make_events,
)
from tests.support.forged_tokens import claims, hs256
from tests.support.services import make_settings
from tests.support.tokens import TENANT_A, TEST_SECRET, TokenFactory, auth

EVENTS = "/system/events"
IDENTIFIERS = ("event_type", "entity_type", "entity_id")


def publish(client: TestClient, h: dict[str, str], **changes: Any) -> Any:
    return client.post(EVENTS, headers=h, json={**SEED_PUBLISH_BODY, **changes})


# --- Required strings: blank is missing -----------------------------------------------------


@pytest.mark.parametrize("blank", [" ", "   ", "\t", "\n \r", "\u00a0", "\u3000", "\u2028"])
@pytest.mark.parametrize("name", STRING_FIELDS)
def test_a_blank_required_string_is_missing(
    client: TestClient, h: dict[str, str], runtime: Runtime, name: str, blank: str
) -> None:
    assert_envelope(publish(client, h, **{name: blank}), 400, f"Field required {name}")


@pytest.mark.parametrize("blank", ["  ", "\t"])
def test_a_blank_status_is_missing(
    client: TestClient, h: dict[str, str], runtime: Runtime, blank: str
) -> None:
    event = make_event(runtime)
    response = client.put(f"{EVENTS}/{event['id']}", headers=h, json={"status": blank})
    assert_envelope(response, 400, "Field required status")


# --- Control characters in identifiers ------------------------------------------------------


@pytest.mark.parametrize("char", ["\r", "\n", "\x1b", "\x00", "\x01", "\x1f", "\x7f", "\t"])
@pytest.mark.parametrize("name", IDENTIFIERS)
def test_a_control_character_in_an_identifier_is_invalid(
    client: TestClient, h: dict[str, str], name: str, char: str
) -> None:
    # e.g. "inventory_updated\r\n{"level": "error"...}" would forge a line in a text log
    value = f"inventory{char}updated"
    assert_envelope(publish(client, h, **{name: value}), 400, f"Invalid {name}")


@pytest.mark.parametrize("name", ["event_type", "source_module", "entity_type"])
def test_a_control_character_in_a_filter_is_invalid(
    client: TestClient, h: dict[str, str], name: str
) -> None:
    response = client.get(EVENTS, headers=h, params={name: "a\nb"})
    assert_envelope(response, 400, f"Invalid {name}")


BIDI = ["\u202e", "\u202a", "\u202d", "\u2066", "\u2069", "\u200f", "\u061c"]
"""Overrides, embeddings, isolates, marks: ``invoice\u202efdp.exe`` shows as ``invoiceexe.pdf``."""


@pytest.mark.parametrize("char", BIDI, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("name", IDENTIFIERS)
def test_a_bidi_control_in_an_identifier_is_invalid(
    client: TestClient, h: dict[str, str], runtime: Runtime, name: str, char: str
) -> None:
    assert_envelope(publish(client, h, **{name: f"invoice{char}fdp.exe"}), 400, f"Invalid {name}")
    item = {**SEED_PUBLISH_BODY, name: f"{char}x"}
    batch = client.post(f"{EVENTS}/batch", headers=h, json={"events": [SEED_PUBLISH_BODY, item]})
    assert_envelope(batch, 400, f"events[1]: Invalid {name}")


@pytest.mark.parametrize("name", ["event_type", "entity_type"])
def test_a_bidi_control_in_a_filter_is_invalid(
    client: TestClient, h: dict[str, str], name: str
) -> None:
    # No identifier holds one, as no identifier holds a control character
    assert_envelope(
        client.get(EVENTS, headers=h, params={name: "a\u202eb"}), 400, f"Invalid {name}"
    )
    replay = client.post(f"{EVENTS}/replay", headers=h, json={name: "a\u202eb", "dry_run": True})
    assert_envelope(replay, 400, f"Invalid {name}")


def test_event_data_holds_any_json_but_a_nul(client: TestClient, h: dict[str, str]) -> None:
    # Given control characters, newlines and odd keys inside event_data
    data = {"line\nbreak": "a\r\nb\x1b[31m", "": [None, True, {"\t": "\x7f"}], "é𝄞": 1}
    created = publish(client, h, event_data=data)
    assert created.status_code == 201, created.text
    assert created.json()["event"]["event_data"] == data
    # But a NUL, which jsonb cannot store, is refused (the document says so: propertyNames)
    assert_envelope(publish(client, h, event_data={"k\x00": 1}), 400, "Invalid event_data")


# --- error_message is cut, never refused -----------------------------------------------------


@pytest.mark.parametrize("length", [MAX_ERROR_MESSAGE, MAX_ERROR_MESSAGE + 1, 200_000])
def test_a_long_error_message_is_stored_cut(
    client: TestClient, h: dict[str, str], runtime: Runtime, length: int
) -> None:
    event = make_event(runtime)
    message = ("Traceback line\n" * (length // 15 + 1))[:length]
    response = client.put(
        f"{EVENTS}/{event['id']}", headers=h, json={"status": "failed", "error_message": message}
    )
    assert response.status_code == 200, response.text
    stored = response.json()["event"]["error_message"]
    if length <= MAX_ERROR_MESSAGE:
        assert stored == message
    else:
        assert len(stored) == MAX_ERROR_MESSAGE and stored == message[: MAX_ERROR_MESSAGE - 1] + "…"
    listed = client.get(EVENTS, headers=h).json()["events"][0]
    assert listed["error_message"] == stored


# --- processed_at: RFC 3339 only ------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "2023-W13-6", "20230401T150500Z", "2023-04-01T15Z", "2023-04-01T15:05:00"]
)
def test_processed_at_is_rfc3339_only(
    client: TestClient, h: dict[str, str], runtime: Runtime, value: str
) -> None:
    event = make_event(runtime)
    body = {"status": "processed", "processed_at": value}
    response = client.put(f"{EVENTS}/{event['id']}", headers=h, json=body)
    assert_envelope(response, 400, "Invalid processed_at")


def test_the_seeds_put_example_stays_valid(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    event = make_event(runtime)
    body = {"status": "processed", "processed_at": "2023-04-01T15:05:00Z", "error_message": None}
    response = client.put(f"{EVENTS}/{event['id']}", headers=h, json=body)
    assert response.status_code == 200
    assert response.json()["event"]["processed_at"] == "2023-04-01T15:05:00Z"


# --- Tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": "9999999999"},
        {"exp": True},
        {"exp": [9999999999]},
        {"nbf": "0"},
        {"iat": "0"},
        {"iat": False},
        {"sub": ""},
        {"sub": "   "},
        {"sub": 42},
    ],
    ids=repr,
)
def test_token_claims_are_type_checked(client: TestClient, overrides: dict[str, Any]) -> None:
    tok = hs256(claims(**overrides), TEST_SECRET.encode())
    response = client.get(EVENTS, headers=auth(tok))
    assert_envelope(response, 401, "Invalid token")


@pytest.fixture
def capped_client(runtime: Runtime, database_url: str) -> Iterator[TestClient]:
    settings = make_settings(database_url, jwt_max_lifetime_seconds=3600)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_token_living_longer_than_the_cap_is_invalid(
    capped_client: TestClient, token: TokenFactory
) -> None:
    assert capped_client.get(EVENTS, headers=auth(token(ttl=3600))).status_code == 200
    assert_envelope(capped_client.get(EVENTS, headers=auth(token(ttl=3601))), 401, "Invalid token")
    no_iat = hs256(claims(iat=None, exp=int(time.time()) + 7200), TEST_SECRET.encode())
    assert_envelope(capped_client.get(EVENTS, headers=auth(no_iat)), 401, "Invalid token")


def test_two_authorization_headers_are_refused(client: TestClient, token: TokenFactory) -> None:
    admin = token(None, [], admin=True)
    headers = [("authorization", f"Bearer {token()}"), ("authorization", f"Bearer {admin}")]
    response = client.get(EVENTS, headers=headers)
    assert_envelope(response, 401, "Invalid token")


# --- Query parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("name", LIST_PARAMS)
def test_a_repeated_list_parameter_is_invalid(
    client: TestClient, h: dict[str, str], name: str
) -> None:
    value = str(TENANT_A) if name == "tenant_id" else ("pending" if name == "status" else "1")
    response = client.get(EVENTS, headers=h, params=[(name, value), (name, value)])
    assert_envelope(response, 400, f"Invalid {name}")


@pytest.mark.parametrize(
    ("method", "path"), [("GET", f"{EVENTS}/stats"), ("POST", EVENTS), ("PUT", f"{EVENTS}/x")]
)
def test_a_repeated_tenant_id_is_invalid_everywhere(
    client: TestClient, h: dict[str, str], method: str, path: str
) -> None:
    params = [("tenant_id", str(TENANT_A))] * 2
    body = SEED_PUBLISH_BODY if method == "POST" else {"status": "processed"}
    response = client.request(
        method, path, headers=h, params=params, json=None if method == "GET" else body
    )
    assert_envelope(response, 400, "Invalid tenant_id")


@pytest.mark.parametrize(
    ("method", "path"), [("GET", EVENTS), ("GET", f"{EVENTS}/stats"), ("POST", EVENTS)]
)
def test_an_unknown_query_parameter_is_refused(
    client: TestClient, h: dict[str, str], method: str, path: str
) -> None:
    # A typo'd filter must not list everything; the document names every parameter
    response = client.request(
        method,
        path,
        headers=h,
        params={"evnt_type": "x"},
        json=SEED_PUBLISH_BODY if method == "POST" else None,
    )
    assert_envelope(response, 400, "Unknown query parameter")


@pytest.mark.parametrize("path", [EVENTS, f"{EVENTS}/stats"])
def test_an_empty_tenant_id_means_none(client: TestClient, h: dict[str, str], path: str) -> None:
    assert client.get(path, headers=h, params={"tenant_id": ""}).status_code == 200


@pytest.mark.parametrize(
    "spelling",
    [
        "aaaaaaaaaaaa4aaa8aaaaaaaaaaaaaaa",
        "{aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa}",
        "urn:uuid:aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
        " aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
    ],
)
@pytest.mark.parametrize("path", [EVENTS, f"{EVENTS}/stats"])
def test_a_tenant_id_is_a_canonical_uuid(
    client: TestClient, h: dict[str, str], path: str, spelling: str
) -> None:
    response = client.get(path, headers=h, params={"tenant_id": spelling})
    assert_envelope(response, 400, "Invalid tenant_id")


# --- Duplicate keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("POST", EVENTS, '{"target_module": "warehouse", "target_module": "billing"}'),
        ("POST", EVENTS, '{"event_data": {"qty": 1, "qty": -1}}'),
        ("POST", f"{EVENTS}/batch", '{"events": [{"a": 1, "b": {"c": 1, "c": 2}}]}'),
        ("POST", f"{EVENTS}/batch", '{"events": [], "events": [{}]}'),
        ("PUT", f"{EVENTS}/{NO_SUCH_EVENT}", '{"status": "failed", "status": "processed"}'),
        ("POST", f"{EVENTS}/replay", '{"dry_run": true, "dry_run": false}'),
    ],
    ids=["publish", "event_data", "batch item", "batch", "put", "replay"],
)
def test_a_key_twice_in_one_object_is_refused(
    client: TestClient, h: dict[str, str], runtime: Runtime, method: str, path: str, raw: str
) -> None:
    # Parsers disagree on which value counts (first, last, an error): a proxy or a signature
    # check reading the first would see another request than the API reading the last
    if method == "POST" and path == EVENTS:  # the rest of a valid publish around the pair
        raw = json.dumps(SEED_PUBLISH_BODY)[:-1] + ", " + raw[1:]
    response = client.request(method, path, headers=h, content=raw)
    assert_envelope(response, 400, "Duplicate key in JSON body")
    assert client.get(EVENTS, headers=h).json()["total"] == 0  # nothing stored


def test_the_same_key_in_two_objects_is_no_duplicate(client: TestClient, h: dict[str, str]) -> None:
    data = {"a": {"id": 1}, "b": {"id": 2}, "items": [{"id": 3}, {"id": 4}]}
    created = publish(client, h, event_data=data)
    assert created.status_code == 201, created.text
    assert created.json()["event"]["event_data"] == data


# --- Numbers round-trip ---------------------------------------------------------------------


def typed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (type(value).__name__, value)
    return value


@pytest.mark.parametrize(
    "number",
    ["1e308", "1.5e3", "1E+2", "1.0", "1.50", "-0.0", "-0", "1e-7", "0.1", "-1e-400", "5e-324",
     "12345678901234567890", "3.602879701896397e+16", "1.7976931348623157e308",
     "1234567890123456789012.5", "123e-2"],
)  # fmt: skip
def test_a_number_lists_as_the_publish_answered(
    client: TestClient, h: dict[str, str], number: str
) -> None:
    # Given a publish whose event_data holds the number as written
    raw = json.dumps({**SEED_PUBLISH_BODY, "event_data": {"n": 0}}).replace(
        '"n": 0', f'"n": {number}'
    )
    created = client.post(EVENTS, headers=h, content=raw)
    assert created.status_code == 201, created.text
    # Then the list gives back exactly what the publish answered, type and text alike
    listed = client.get(EVENTS, headers=h, params={"limit": "1"}).json()["events"][0]
    answered = created.json()["event"]["event_data"]
    assert typed(listed["event_data"]) == typed(answered)
    assert json.dumps(listed["event_data"]) == json.dumps(answered)
    assert typed(answered) == typed(parse_json_body(f'{{"n": {number}}}'.encode()))


# --- HTTP edges the app answers ---------------------------------------------------------------


def test_a_trailing_slash_is_a_404_without_redirect(client: TestClient, h: dict[str, str]) -> None:
    response = client.get(f"{EVENTS}/", headers=h, follow_redirects=False)
    assert_envelope(response, 404, "Not Found")
    assert "location" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", EVENTS, "GET, POST"),
        ("OPTIONS", EVENTS, "GET, POST"),
        ("PATCH", f"{EVENTS}/{NO_SUCH_EVENT}", "GET, PUT"),
        ("POST", f"{EVENTS}/stats", "GET"),  # a concrete path wins over /{event_id}
        ("PUT", EVENTS, "GET, POST"),
        # concrete paths the /{event_id} template also matches: an operation, not an event
        ("GET", f"{EVENTS}/replay", "POST"),
        ("PUT", f"{EVENTS}/replay", "POST"),
        ("GET", f"{EVENTS}/batch", "POST"),
        ("PUT", f"{EVENTS}/batch", "POST"),
        ("PUT", f"{EVENTS}/stats", "GET"),
    ],
)
def test_a_405_names_every_allowed_method(
    client: TestClient, h: dict[str, str], method: str, path: str, allow: str
) -> None:
    response = client.request(method, path, headers=h)
    assert_envelope(response, 405, "Method Not Allowed")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("event_id", ["%09", "%0A", "a%09b", "%0D"])
def test_an_id_of_url_control_characters_is_not_found(
    client: TestClient, h: dict[str, str], method: str, event_id: str
) -> None:
    # urlsplit drops tab/CR/LF: matched on request.url.path, /events/%09 took no method (405)
    body = {"status": "processed"} if method == "PUT" else None
    response = client.request(method, f"{EVENTS}/{event_id}", headers=h, json=body)
    assert_envelope(response, 404)


def test_responses_say_nosniff_and_no_store(client: TestClient, h: dict[str, str]) -> None:
    for response in (client.get(EVENTS, headers=h), client.get(EVENTS), client.get("/healthz")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_cannot_be_framed(client: TestClient, page: str) -> None:
    # Swagger UI's Authorize dialog takes a token: a page framing it could overlay it
    response = client.get(page)
    assert response.status_code == 200
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_nothing_from_elsewhere(client: TestClient, page: str) -> None:
    html = client.get(page).text
    assert "http://" not in html and "https://" not in html, html
    for asset in ("swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui.css"):
        if page == "/docs":
            assert f"/docs-assets/{asset}" in html
    for src in [part.split('"')[1] for part in html.split("src=")[1:]]:
        response = client.get(src)
        assert response.status_code == 200 and len(response.content) > 100_000, src
        assert response.headers["x-content-type-options"] == "nosniff"


def test_a_client_gone_mid_body_is_no_500(
    runtime: Runtime, token: TokenFactory, caplog: Any
) -> None:
    # Given an app whose client disconnects before sending its body
    app = create_app(runtime=runtime)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": EVENTS,
        "raw_path": EVENTS.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token()}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"300"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }
    import anyio

    with caplog.at_level("INFO"):
        anyio.run(app, scope, receive, send)
    # Then it is counted as the client's 499, logged at INFO, and nothing is an error
    assert sent[0]["status"] == 499
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
    assert any("client disconnected" in r.getMessage() for r in caplog.records)


# --- Bounded list responses -----------------------------------------------------------------

DATA_BYTES = 8 * 1024
CAP = 256 * 1024
"""Room for about 30 events of ``DATA_BYTES`` (the cap must exceed the largest event)."""


@pytest.fixture
def small_cap(database_url: str) -> Settings:
    return make_settings(
        database_url, max_event_data_bytes=DATA_BYTES, max_response_bytes=CAP - 128 * 1024 + CAP
    )


def blob_events(count: int, size: int) -> list[dict[str, Any]]:
    from datetime import UTC, datetime, timedelta

    start = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        event_values(
            created_at=start + timedelta(seconds=i), event_data={"i": i, "blob": "x" * size}
        )
        for i in range(count)
    ]


def test_a_page_past_the_cap_is_cut_and_pages_on(
    runtime: Runtime, small_cap: Settings, token: TokenFactory
) -> None:
    # Given 100 events of ~8 KiB and a cap that holds far fewer
    make_events(runtime, blob_events(100, DATA_BYTES - 100))
    with TestClient(create_app(small_cap), raise_server_exceptions=False) as client:
        h = auth(token())
        # When page 1 of 100 is asked for
        first = client.get(EVENTS, headers=h, params={"limit": "100"})
        body = first.json()
        # Then it stays under the cap, whole, total exact, and says the limit it could hold
        assert len(first.content) <= small_cap.max_response_bytes
        assert body["total"] == 100 and body["page"] == 1
        assert 1 <= body["limit"] < 100 and len(body["events"]) == body["limit"]
        # And following pages with the answered limit reads every event once, newest first
        seen = [e["event_data"]["i"] for e in body["events"]]
        limit, page = body["limit"], 2
        while len(seen) < 100:
            more = client.get(EVENTS, headers=h, params={"limit": str(limit), "page": str(page)})
            assert len(more.content) <= small_cap.max_response_bytes
            seen += [e["event_data"]["i"] for e in more.json()["events"]]
            page += 1
        assert seen == list(range(99, -1, -1))
        # And a cut page past the first names where its events start: (page - 1) * limit
        # (events 50..99 of the order do not fit: the 25 that divide 50 do, page 3 of 25)
        second = client.get(EVENTS, headers=h, params={"limit": "50", "page": "2"}).json()
        assert (second["page"], second["limit"]) == (3, 25)
        assert [e["event_data"]["i"] for e in second["events"]] == list(range(49, 24, -1))
        assert second["total"] == 100


def test_memory_per_list_request_stays_bounded(runtime: Runtime, small_cap: Settings) -> None:
    # Given 300 events of ~8 KiB (2.4 MB) and a list of all of them at once
    make_events(runtime, blob_events(300, DATA_BYTES - 100))
    principal = Principal("reader", TENANT_A, frozenset({"manage:system"}), False, "user")
    query = ListQuery(filters={}, page=1, limit=300)
    # When the service builds the page
    tracemalloc.start()
    try:
        with runtime.sessions() as session:
            page = listing.list_events(session, small_cap, principal, None, query)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then it read and held about the cap, not the 2.4 MB the rows weigh
    assert len(page.body()) <= small_cap.max_response_bytes
    assert peak < 4 * small_cap.max_response_bytes, peak
