"""Hostile input the contract suite does not already send: SQL- and path-looking strings in
every field and filter, hostile ids in the path, invalid UTF-8 in the URL, huge numbers and
deep nesting outside event_data, odd content types, oversized PUTs.

Already covered elsewhere, not repeated here: bodies above the cap (streamed or not), NaN,
invalid UTF-8 and runaway nesting in the body, NUL and lone surrogates in fields, event_data
depth and size caps, bad page/limit/status/tenant_id (tests/contract/test_seed_contract.py);
arbitrary JSON bodies (tests/contract/test_property.py); JWT attacks
(tests/contract/test_auth_matrix.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from bus.runtime import Runtime
from tests.support.envelope import assert_envelope
from tests.support.factories import SEED_PUBLISH_BODY, make_event

EVENTS = "/system/events"
FREE_TEXT = ("event_type", "entity_type", "entity_id")
MODULES = ("source_module", "target_module")
FILTERS = ("event_type", "source_module", "target_module", "entity_type")
HOSTILE = [
    "' OR '1'='1",
    "'; DROP TABLE system_events; --",
    '" OR 1=1 --',
    "1; SELECT pg_sleep(10)",
    "%",
    "_",
    "*",
    "\\",
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "/system/events/stats",
    "${jndi:ldap://127.0.0.1/a}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "\uff4f\uff52\uff44\uff45\uff52\uff53",  # fullwidth "orders": not the ASCII name
]


def rows(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM system_events")).scalar_one())


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_strings_in_free_text_fields_are_stored_verbatim(
    client: TestClient, h: dict[str, str], runtime: Runtime, value: str
) -> None:
    # Given the hostile string in every free-text field of one event
    body = {**SEED_PUBLISH_BODY, **dict.fromkeys(FREE_TEXT, value)}
    # When it is published, then it is an ordinary 201 and stored as given
    created = assert_envelope(client.post(EVENTS, headers=h, json=body), 201)["event"]
    assert {k: created[k] for k in FREE_TEXT} == dict.fromkeys(FREE_TEXT, value)
    # And each filter matches it exactly, as data: one row, not every row nor an error
    make_event(runtime)  # an ordinary event the filter must not match
    for name in ("event_type", "entity_type"):
        page = assert_envelope(client.get(EVENTS, headers=h, params={name: value}), 200)
        assert [e["id"] for e in page["events"]] == [created["id"]], name
    assert rows(runtime) == 2


@pytest.mark.parametrize("value", [v for v in HOSTILE if v != "_"], ids=repr)
@pytest.mark.parametrize("name", MODULES)
def test_hostile_strings_are_no_module_name(
    client: TestClient, h: dict[str, str], runtime: Runtime, name: str, value: str
) -> None:
    response = client.post(EVENTS, headers=h, json={**SEED_PUBLISH_BODY, name: value})

    assert assert_envelope(response, 400)["message"] == f"Invalid {name}"
    assert rows(runtime) == 0


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize("name", FILTERS)
def test_hostile_strings_in_filters_match_nothing(
    client: TestClient, h: dict[str, str], runtime: Runtime, name: str, value: str
) -> None:
    # Given ordinary events: neither % nor _ nor a quote may widen an exact match
    make_event(runtime)
    make_event(runtime)
    for path in (EVENTS, f"{EVENTS}/stats"):
        body = assert_envelope(client.get(path, headers=h, params={name: value}), (200, 400))
        if path == EVENTS and "total" in body:
            assert body["total"] == 0 and body["events"] == []
    assert rows(runtime) == 2


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize("name", FILTERS)
def test_hostile_strings_in_replay_filters_match_nothing(
    client: TestClient, h: dict[str, str], runtime: Runtime, name: str, value: str
) -> None:
    make_event(runtime, status="failed")
    for dry_run in (True, False):
        response = client.post(
            f"{EVENTS}/replay", headers=h, json={name: value, "dry_run": dry_run}
        )
        body = assert_envelope(response, (200, 400))
        if response.status_code == 200:
            assert (body["matched"], body["replayed"]) == (0, 0)
    with runtime.engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM system_events")).scalar_one() == "failed"


@pytest.mark.parametrize("value", [*HOSTILE, "x" * 5000, "%00", "eyJ9", "a.b.c"], ids=repr)
def test_hostile_cursors_are_invalid(client: TestClient, h: dict[str, str], value: str) -> None:
    response = client.get(EVENTS, headers=h, params={"cursor": value})

    assert assert_envelope(response, 400)["message"] == "Invalid cursor"


HOSTILE_IDS = [
    "' OR '1'='1",
    "1 OR 1=1",
    "..",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f",
    "%00",
    "%FF%FE",
    "00000000-0000-0000-0000-000000000000",
    "x" * 10_000,
    "{aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa}",
    "urn:uuid:aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
    "aaaaaaaaaaaa4aaa8aaaaaaaaaaaaaaa",
]


@pytest.mark.parametrize("event_id", HOSTILE_IDS, ids=lambda v: repr(v[:30]))
def test_hostile_event_ids_read_nothing(
    client: TestClient, h: dict[str, str], runtime: Runtime, event_id: str
) -> None:
    make_event(runtime)

    response = client.get(f"{EVENTS}/{event_id}", headers=h)

    assert_envelope(response, 404)


@pytest.mark.parametrize("event_id", HOSTILE_IDS, ids=lambda v: repr(v[:30]))
def test_hostile_event_ids(
    client: TestClient, h: dict[str, str], runtime: Runtime, event_id: str
) -> None:
    make_event(runtime)

    response = client.put(f"{EVENTS}/{event_id}", headers=h, json={"status": "processed"})

    assert_envelope(response, (404, 405))
    assert rows(runtime) == 1
    with runtime.engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM system_events")).scalar_one() == "pending"


@pytest.mark.parametrize(
    "query",
    ["event_type=%FF%FE", "status=%C3%28", "tenant_id=%ED%A0%80", "cursor=%FF", "series=%C3%28"],
)
def test_invalid_utf8_in_the_query(client: TestClient, h: dict[str, str], query: str) -> None:
    for path in (EVENTS, f"{EVENTS}/stats"):
        assert_envelope(client.get(f"{path}?{query}", headers=h), (200, 400))


def test_huge_integers_in_event_data(client: TestClient, h: dict[str, str]) -> None:
    # Given an integer of 4,000 digits: JSON allows it and jsonb stores it exactly
    big = 10**3999
    created = client.post(EVENTS, headers=h, json={**SEED_PUBLISH_BODY, "event_data": {"n": big}})
    assert assert_envelope(created, 201)["event"]["event_data"] == {"n": big}
    # And one past Python's 4,300-digit limit is refused as a body, not a 500
    raw = json.dumps({**SEED_PUBLISH_BODY, "event_data": {"n": 0}}).replace(
        '"n": 0', '"n": ' + "9" * 5000
    )
    assert assert_envelope(client.post(EVENTS, headers=h, content=raw), 400)["message"] == (
        "Invalid JSON body"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_type", 10**400),
        ("entity_id", 1e308),
        ("entity_id", -(2**63)),
        ("event_type", True),
        ("event_type", ["a"]),
        ("entity_type", {"$ne": ""}),
    ],
    ids=repr,
)
def test_non_strings_in_string_fields(
    client: TestClient, h: dict[str, str], field: str, value: Any
) -> None:
    response = client.post(EVENTS, headers=h, json={**SEED_PUBLISH_BODY, field: value})

    assert assert_envelope(response, 400)["message"] == f"Invalid {field}"


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("levels", [100, 900, 5000])
def test_deep_nesting_outside_event_data(
    client: TestClient, h: dict[str, str], runtime: Runtime, levels: int
) -> None:
    raw = '{"event_type": ' + "[" * levels + '"x"' + "]" * levels + "}"
    publish = client.post(EVENTS, headers=h, content=raw)
    assert assert_envelope(publish, 400)["message"] in (
        "Invalid JSON body",
        "Field required source_module",
        "Invalid event_type",
    )
    event = make_event(runtime)
    put_raw = '{"status": "processed", "error_message": ' + "[" * levels + "]" * levels + "}"
    update = client.put(f"{EVENTS}/{event['id']}", headers=h, content=put_raw)
    assert assert_envelope(update, 400)["message"] in ("Invalid JSON body", "Invalid error_message")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("processed_at", 10**400),
        ("processed_at", "9999-12-31T23:59:59-23:59"),
        ("processed_at", "0001-01-01T00:00:00+14:00"),
        ("processed_at", "2024-02-30T00:00:00Z"),
        ("processed_at", "' OR 1=1 --"),
        ("error_message", 1e308),
        ("status", "processed' OR '1'='1"),
    ],
    ids=repr,
)
def test_hostile_status_updates(
    client: TestClient, h: dict[str, str], runtime: Runtime, field: str, value: Any
) -> None:
    event = make_event(runtime)
    body = {"status": "processed", field: value}

    response = client.put(f"{EVENTS}/{event['id']}", headers=h, json=body)

    assert_envelope(response, (200, 400))


def test_an_oversized_put_is_refused(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    event = make_event(runtime)
    raw = json.dumps({"status": "failed", "error_message": "x" * (2 * 1024 * 1024)})

    response = client.put(f"{EVENTS}/{event['id']}", headers=h, content=raw)

    assert assert_envelope(response, 413)["message"] == "Request body too large"


def test_a_declared_length_above_the_cap_is_refused_before_reading(
    client: TestClient, h: dict[str, str]
) -> None:
    headers = {**h, "Content-Length": str(10**12)}

    response = client.post(EVENTS, headers=headers, content=b"{}")

    assert_envelope(response, (400, 413))


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
def test_odd_content_types(client: TestClient, h: dict[str, str], content_type: str) -> None:
    raw = json.dumps(SEED_PUBLISH_BODY)

    response = client.post(EVENTS, headers={**h, "Content-Type": content_type}, content=raw)

    assert_envelope(response, (201, 400, 415))


def test_duplicate_keys_are_refused(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    # (before: the last one won, while a repeated query parameter or header is refused)
    raw = json.dumps(SEED_PUBLISH_BODY)[:-1] + ', "target_module": "billing"}'

    refused = assert_envelope(client.post(EVENTS, headers=h, content=raw), 400)

    assert refused["message"] == "Duplicate key in JSON body"
    assert rows(runtime) == 0


@pytest.mark.parametrize(
    "authorization",
    ["Bearer " + "a" * 100_000, "Bearer a.b.c", "Bearer ' OR 1=1 --", "Basic YWRtaW46YWRtaW4="],
    ids=lambda v: v[:20],
)
def test_hostile_authorization_headers(client: TestClient, authorization: str) -> None:
    response = client.get(EVENTS, headers={"Authorization": authorization})

    assert_envelope(response, 401)


@pytest.mark.parametrize("request_id", ["\x7f", "a" * 65, "' OR 1=1 --\t", "../../x"])
def test_hostile_request_ids_are_replaced_or_kept_printable(
    client: TestClient, h: dict[str, str], request_id: str
) -> None:
    response = client.get(EVENTS, headers={**h, "X-Request-ID": request_id})

    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    assert echoed.isprintable() and 0 < len(echoed) <= 64
