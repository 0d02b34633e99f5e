"""The seed's "System Events API", example by example: envelopes, status codes and messages.

Every error must reach a client as exactly ``{"success": false, "message": ...}``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import errors as api_errors
from bus.events.ids import created_at_of
from bus.events.schemas import MAX_EVENT_DATA_DEPTH, REQUIRED_FIELDS, parse_timestamp
from bus.read import listing
from bus.runtime import Runtime
from bus.settings import Settings
from tests.contract.seed import (
    SEED_FAILED_RESPONSE,
    SEED_LIST_RESPONSE,
    SEED_PUBLISH_RESPONSE,
    SEED_UPDATE_BODY,
    SEED_UPDATED_RESPONSE,
)
from tests.support.envelope import assert_envelope
from tests.support.factories import (
    NO_SUCH_EVENT,
    RFC3339_UTC,
    SEED_PUBLISH_BODY,
    as_seed,
    make_event,
    make_seed_event,
)
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

EVENTS = "/system/events"
STRING_FIELDS = REQUIRED_FIELDS[:-1]
MODULE_FIELDS = ("source_module", "target_module")
FREE_TEXT_FIELDS = ("event_type", "entity_type", "entity_id")


def publish(client: TestClient, h: dict[str, str], body: Any) -> Any:
    return client.post(EVENTS, headers=h, params={"tenant_id": str(TENANT_A)}, json=body)


def publish_raw(client: TestClient, h: dict[str, str], raw: bytes) -> Any:
    return client.post(EVENTS, headers={**h, "Content-Type": "application/json"}, content=raw)


def seed_body(**changes: Any) -> dict[str, Any]:
    """The seed's publish body; a change to ``...`` removes the field."""
    body = {**SEED_PUBLISH_BODY, **changes}
    return {k: v for k, v in body.items() if v is not ...}


def between(value: str, before: datetime, after: datetime) -> bool:
    return before <= parse_timestamp(value, "t") <= after


# --- POST /system/events ---------------------------------------------------------------------


def test_publish_answers_the_seeds_envelope(client: TestClient, h: dict[str, str]) -> None:
    # Given the seed's request body
    before = datetime.now(UTC)
    # When it is published in tenant A
    response = publish(client, h, SEED_PUBLISH_BODY)
    # Then the answer is the seed's, but for the new id, the tenant and the creation time
    assert response.status_code == 201, response.text
    body = response.json()
    event = body["event"]
    # A UUID (all the seed promises): a version 7 one, naming its created_at's millisecond
    event_id = uuid.UUID(event["id"])
    assert event_id.version == 7
    assert created_at_of(event_id) == parse_timestamp(event["created_at"], "t").replace(
        microsecond=parse_timestamp(event["created_at"], "t").microsecond // 1000 * 1000
    )
    assert event["tenant_id"] == str(TENANT_A)
    assert RFC3339_UTC.fullmatch(event["created_at"])
    assert between(event["created_at"], before, datetime.now(UTC))
    seed_event = SEED_PUBLISH_RESPONSE["event"]
    expected = {**SEED_PUBLISH_RESPONSE, "event": {**seed_event, "created_at": "t"}}
    assert {**body, "event": {**as_seed(event, seed_event), "created_at": "t"}} == expected
    assert list(event) == list(seed_event)  # the seed's field order, too


def test_a_published_event_is_stored_as_answered(client: TestClient, h: dict[str, str]) -> None:
    created = publish(client, h, SEED_PUBLISH_BODY).json()["event"]

    listed = client.get(EVENTS, headers=h).json()

    assert listed["events"] == [created]


def test_publish_without_tenant_id_acts_in_the_tokens_tenant(
    client: TestClient, token: TokenFactory
) -> None:
    response = client.post(EVENTS, headers=auth(token(TENANT_B)), json=SEED_PUBLISH_BODY)

    assert response.status_code == 201
    assert response.json()["event"]["tenant_id"] == str(TENANT_B)


@pytest.mark.parametrize("absent", [..., None, ""], ids=["missing", "null", "empty"])
@pytest.mark.parametrize("name", REQUIRED_FIELDS)
def test_each_required_field(client: TestClient, h: dict[str, str], name: str, absent: Any) -> None:
    response = publish(client, h, seed_body(**{name: absent}))

    assert_envelope(response, 400, f"Field required {name}")


@pytest.mark.parametrize("first", range(len(REQUIRED_FIELDS)))
def test_the_first_missing_field_in_the_seeds_order_is_named(
    client: TestClient, h: dict[str, str], first: int
) -> None:
    # Given a body missing this field and every one after it, and with the others wrong
    missing = REQUIRED_FIELDS[first:]
    body = seed_body(**dict.fromkeys(missing, ...))
    body.update({name: 5 for name in STRING_FIELDS if name not in missing})
    # When it is published
    response = publish(client, h, body)
    # Then a missing field wins over a wrong one, and the first in the seed's order is named
    assert_envelope(response, 400, f"Field required {REQUIRED_FIELDS[first]}")


@pytest.mark.parametrize("data", [[1, 2], "a string", 42, 1.5, True, False, 0], ids=repr)
def test_event_data_must_be_an_object(client: TestClient, h: dict[str, str], data: Any) -> None:
    response = publish(client, h, seed_body(event_data=data))

    assert_envelope(response, 400, "Event data must be object")


def test_an_empty_object_is_event_data(client: TestClient, h: dict[str, str]) -> None:
    response = publish(client, h, seed_body(event_data={}))

    assert response.status_code == 201
    assert response.json()["event"]["event_data"] == {}


@pytest.mark.parametrize(
    "value", [5, 1.5, True, ["inventory"], {"a": "b"}, "x" * 256, "nul\x00"], ids=repr
)
@pytest.mark.parametrize("name", STRING_FIELDS)
def test_a_string_field_of_the_wrong_type_or_too_long(
    client: TestClient, h: dict[str, str], name: str, value: Any
) -> None:
    response = publish(client, h, seed_body(**{name: value}))

    assert_envelope(response, 400, f"Invalid {name}")


@pytest.mark.parametrize("name", FREE_TEXT_FIELDS)
def test_free_text_fields_take_255_characters_of_any_script(
    client: TestClient, h: dict[str, str], name: str
) -> None:
    value = "é" * 254 + "𝄞"
    response = publish(client, h, seed_body(**{name: value}))

    assert response.status_code == 201, response.text
    assert response.json()["event"][name] == value


@pytest.mark.parametrize(
    "value", ["Inventory", "in ventory", "inv/entory", "entrepôt", "a" * 65, " inventory"]
)
@pytest.mark.parametrize("name", MODULE_FIELDS)
def test_module_names_are_restricted(
    client: TestClient, h: dict[str, str], name: str, value: str
) -> None:
    response = publish(client, h, seed_body(**{name: value}))

    assert_envelope(response, 400, f"Invalid {name}")


@pytest.mark.parametrize("value", ["a" * 64, "inventory_v2.eu-west", "0", "-", "."])
@pytest.mark.parametrize("name", MODULE_FIELDS)
def test_module_names_allowed(client: TestClient, h: dict[str, str], name: str, value: str) -> None:
    response = publish(client, h, seed_body(**{name: value}))

    assert response.status_code == 201, response.text
    assert response.json()["event"][name] == value


@pytest.mark.parametrize("name", STRING_FIELDS)
def test_a_lone_surrogate_is_not_text(client: TestClient, h: dict[str, str], name: str) -> None:
    # JSON can spell "\ud800", but no UTF-8 database can store it.
    raw = json.dumps(seed_body(**{name: "bad\ud800"})).encode()

    assert_envelope(publish_raw(client, h, raw), 400, f"Invalid {name}")


@pytest.mark.parametrize(
    "data",
    [
        {"text": "nul\x00inside"},
        {"key\x00": 1},
        {"lone": "\udc00"},
        {"\ud83d": "lone surrogate key"},
        {"deep": [{"deeper": "\x00"}]},
    ],
    ids=repr,
)
def test_event_data_postgresql_cannot_store(
    client: TestClient, h: dict[str, str], data: dict[str, Any]
) -> None:
    raw = json.dumps(seed_body(event_data=data)).encode()

    assert_envelope(publish_raw(client, h, raw), 400, "Invalid event_data")


@pytest.mark.parametrize("number", [b"1e999", b"-1e999"])
def test_event_data_numbers_beyond_float_range(
    client: TestClient, h: dict[str, str], number: bytes
) -> None:
    # Python reads 1e999 as infinity, which JSON has no spelling for.
    raw = json.dumps(seed_body(event_data={"n": 0})).encode().replace(b'"n": 0', b'"n": ' + number)

    assert_envelope(publish_raw(client, h, raw), 400, "Invalid event_data")


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` levels deep, counting itself."""
    data: dict[str, Any] = {}
    for _ in range(depth - 1):
        data = {"a": data}
    return data


def test_event_data_nesting_is_bounded(client: TestClient, h: dict[str, str]) -> None:
    deepest = publish(client, h, seed_body(event_data=nested(MAX_EVENT_DATA_DEPTH)))
    assert deepest.status_code == 201, deepest.text
    assert deepest.json()["event"]["event_data"] == nested(MAX_EVENT_DATA_DEPTH)

    assert_envelope(
        publish(client, h, seed_body(event_data=nested(MAX_EVENT_DATA_DEPTH + 1))),
        400,
        "Invalid event_data",
    )
    # Deeper than the response serializer goes: refused before it is stored, not a 500 after.
    assert_envelope(
        publish(client, h, seed_body(event_data=nested(400))), 400, "Invalid event_data"
    )
    assert client.get(EVENTS, headers=h).json()["total"] == 1


def test_numbers_keep_their_value(client: TestClient, h: dict[str, str]) -> None:
    data = {"big": 10**40, "negative": -(2**63) - 1, "tiny": 5e-324, "float": 1.5, "zero": 0}

    response = publish(client, h, seed_body(event_data=data))

    assert response.status_code == 201
    assert response.json()["event"]["event_data"] == data
    assert client.get(EVENTS, headers=h).json()["events"][0]["event_data"] == data


def test_event_data_is_capped(client: TestClient, h: dict[str, str], settings: Settings) -> None:
    # Given event_data whose compact JSON is exactly the cap (256 KiB by default)
    cap = settings.max_event_data_bytes
    assert cap == 256 * 1024
    at_cap = {"blob": "x" * (cap - len('{"blob":""}'))}
    assert len(json.dumps(at_cap, separators=(",", ":"))) == cap
    # When it is published, then it is accepted; one byte more is refused
    assert publish(client, h, seed_body(event_data=at_cap)).status_code == 201
    above = {"blob": at_cap["blob"] + "x"}
    assert_envelope(publish(client, h, seed_body(event_data=above)), 413, "Event data too large")


def test_the_event_data_cap_counts_utf8_bytes(client: TestClient, h: dict[str, str]) -> None:
    # "é" is two bytes: 140 000 of them are 280 000 bytes, above 256 KiB.
    response = publish(client, h, seed_body(event_data={"t": "é" * 140_000}))

    assert_envelope(response, 413, "Event data too large")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"",
        b'{"event_type": "x",',
        b"\xff\xfe{}",
        b'{"event_type": "\xc3\x28"}',
        b'{"event_data": {"n": NaN}}',
        b'{"event_data": {"n": Infinity}}',
        b'{"event_data": {"n": -Infinity}}',
        b"[1, 2]",
        b'"a string"',
        b"null",
        b"[" * 100_000,
    ],
    ids=lambda raw: repr(raw[:30]),
)
def test_a_body_that_is_not_a_json_object(
    client: TestClient, h: dict[str, str], raw: bytes
) -> None:
    assert_envelope(publish_raw(client, h, raw), 400, "Invalid JSON body")


def test_a_body_above_the_cap(client: TestClient, h: dict[str, str], settings: Settings) -> None:
    raw = b" " * (settings.max_body_bytes + 1)

    assert_envelope(publish_raw(client, h, raw), 413, "Request body too large")


def test_a_streamed_body_above_the_cap(
    client: TestClient, h: dict[str, str], settings: Settings
) -> None:
    # Given a body sent in chunks, with no Content-Length to refuse it early
    def chunks() -> Iterator[bytes]:
        for _ in range(settings.max_body_bytes // 65536 + 1):
            yield b" " * 65536

    # When it is published, then it is refused while being read
    response = client.post(EVENTS, headers=h, content=chunks())
    assert_envelope(response, 413, "Request body too large")


def test_a_body_at_the_cap_is_read(
    client: TestClient, h: dict[str, str], settings: Settings
) -> None:
    raw = json.dumps(SEED_PUBLISH_BODY).encode()
    raw += b" " * (settings.max_body_bytes - len(raw))

    assert publish_raw(client, h, raw).status_code == 201


def test_fields_a_publisher_must_not_set_are_ignored(client: TestClient, h: dict[str, str]) -> None:
    # Given a body that also names the fields the bus owns
    forged_id = str(uuid.uuid4())
    body = seed_body(
        id=forged_id,
        tenant_id=str(TENANT_B),
        status="processed",
        retry_count=7,
        created_at="2001-01-01T00:00:00Z",
        processed_at="2001-01-01T00:00:00Z",
        error_message="forged",
        dispatched_at="2001-01-01T00:00:00Z",
        unknown_field={"x": 1},
    )
    # When it is published
    response = publish(client, h, body)
    # Then the event is new, pending, untried, now, in the caller's tenant
    assert response.status_code == 201
    event = response.json()["event"]
    assert event["id"] != forged_id
    assert event["tenant_id"] == str(TENANT_A)
    assert (event["status"], event["retry_count"]) == ("pending", 0)
    assert (event["processed_at"], event["error_message"]) == (None, None)
    assert not event["created_at"].startswith("2001")
    assert "unknown_field" not in event


# --- PUT /system/events/{id} -----------------------------------------------------------------


@pytest.fixture
def seed_pending(runtime: Runtime) -> dict[str, Any]:
    """The seed's event-uuid-2 (delivery_assigned, pending, created 2023-04-01T11:30:00Z)."""
    return make_seed_event(runtime, SEED_LIST_RESPONSE["events"][1])


def put(client: TestClient, h: dict[str, str], event_id: Any, body: Any) -> Any:
    return client.put(f"{EVENTS}/{event_id}", headers=h, json=body)


def test_update_to_processed_answers_the_seeds_envelope(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any]
) -> None:
    # Given the seed's pending event, when the seed's update body is sent for it
    response = put(client, h, seed_pending["id"], SEED_UPDATE_BODY)
    # Then the answer is the seed's example to the letter (but for the id and tenant)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["event"]["id"] == str(seed_pending["id"])
    assert body["event"]["tenant_id"] == str(TENANT_A)
    seed_event = SEED_UPDATED_RESPONSE["event"]
    assert {**body, "event": as_seed(body["event"], seed_event)} == SEED_UPDATED_RESPONSE


def test_update_to_failed_answers_the_seeds_envelope(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any]
) -> None:
    body = {"status": "failed", "error_message": "Target module unavailable"}

    response = put(client, h, seed_pending["id"], body)

    assert response.status_code == 200, response.text
    seed_event = SEED_FAILED_RESPONSE["event"]
    got = response.json()
    assert {**got, "event": as_seed(got["event"], seed_event)} == SEED_FAILED_RESPONSE


def test_each_failure_counts_and_clears_processed_at(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any]
) -> None:
    # Given an event that was processed
    put(client, h, seed_pending["id"], SEED_UPDATE_BODY)
    # When it is reported failed twice
    put(client, h, seed_pending["id"], {"status": "failed", "error_message": "first"})
    response = put(client, h, seed_pending["id"], {"status": "failed", "error_message": "second"})
    # Then each failure counted, the last error is kept, and it is no longer processed
    event = response.json()["event"]
    assert (event["retry_count"], event["error_message"], event["processed_at"]) == (
        2,
        "second",
        None,
    )
    assert client.get(EVENTS, headers=h).json()["events"] == [event]


def test_processed_without_processed_at_is_processed_now(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any]
) -> None:
    before = datetime.now(UTC)

    response = put(client, h, seed_pending["id"], {"status": "processed"})

    processed_at = response.json()["event"]["processed_at"]
    assert RFC3339_UTC.fullmatch(processed_at)
    assert between(processed_at, before, datetime.now(UTC))


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2023-04-01T17:05:00+02:00", "2023-04-01T15:05:00Z"),
        ("2023-04-01T15:05:00.250z", "2023-04-01T15:05:00.250000Z"),
        ("2023-04-01T15:05:00Z", "2023-04-01T15:05:00Z"),  # the seed's own example
    ],
)
def test_processed_at_is_kept_in_utc(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any], given: str, stored: str
) -> None:
    response = put(client, h, seed_pending["id"], {"status": "processed", "processed_at": given})

    assert response.json()["event"]["processed_at"] == stored


@pytest.mark.parametrize("body", [{}, {"status": None}, {"status": ""}, {"error_message": "x"}])
def test_update_needs_a_status(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any], body: dict[str, Any]
) -> None:
    assert_envelope(put(client, h, seed_pending["id"], body), 400, "Field required status")


@pytest.mark.parametrize("status", ["done", "PROCESSED", " pending", 1, True, ["processed"], {}])
def test_update_to_an_unknown_status(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any], status: Any
) -> None:
    assert_envelope(put(client, h, seed_pending["id"], {"status": status}), 400, "Invalid status")


@pytest.mark.parametrize(
    "processed_at",
    [
        "yesterday",
        "",
        12345,
        ["2023-04-01T15:05:00Z"],
        "2023-13-01T00:00:00Z",
        "2023-04-01T25:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        # RFC 3339 only (issue 9): no zone, ISO 8601's other spellings, text after a NUL
        "2023-04-01T15:05:00",
        "2023-W13-6",
        "20230401T150500Z",
        "2023-04-01T15Z",
        "2023-04-01 15:05:00Z",
        "2023-04-01T15:05:00Z\x00junk",
        "2023-04-01T15:05:60Z",
        "\uff12023-04-01T15:05:00Z",
    ],
    ids=repr,
)
def test_update_with_a_bad_processed_at(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any], processed_at: Any
) -> None:
    body = {"status": "processed", "processed_at": processed_at}

    assert_envelope(put(client, h, seed_pending["id"], body), 400, "Invalid processed_at")


@pytest.mark.parametrize("error_message", [42, {"a": 1}, "nul\x00"], ids=repr)
def test_update_with_a_bad_error_message(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any], error_message: Any
) -> None:
    body = {"status": "failed", "error_message": error_message}

    assert_envelope(put(client, h, seed_pending["id"], body), 400, "Invalid error_message")


def test_update_body_that_is_not_a_json_object(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any]
) -> None:
    for raw in (b"processed", b'["processed"]', b'{"status": NaN}'):
        response = client.put(f"{EVENTS}/{seed_pending['id']}", headers=h, content=raw)
        assert_envelope(response, 400, "Invalid JSON body")


@pytest.mark.parametrize("event_id", ["not-a-uuid", "event-uuid-2", "1", "%00", NO_SUCH_EVENT])
def test_update_of_an_event_that_does_not_exist(
    client: TestClient, h: dict[str, str], seed_pending: dict[str, Any], event_id: str
) -> None:
    assert_envelope(put(client, h, event_id, SEED_UPDATE_BODY), 404, "Event not found")


def test_update_of_another_tenants_event(
    client: TestClient, token: TokenFactory, seed_pending: dict[str, Any]
) -> None:
    # Given tenant A's event, when a manage:system user of tenant B updates it
    response = put(client, auth(token(TENANT_B)), seed_pending["id"], SEED_UPDATE_BODY)
    # Then it does not exist for them, and it is unchanged
    assert_envelope(response, 404, "Event not found")
    event = client.get(EVENTS, headers=auth(token(TENANT_A))).json()["events"][0]
    assert event["status"] == "pending"


# --- GET /system/events ----------------------------------------------------------------------

SEED_CURL_QUERY = (
    "tenant_id={tenant}&event_type=&source_module=&target_module=&status=&entity_type="
    "&page=1&limit=100"
)


def test_list_answers_the_seeds_envelope(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    # Given the seed's two events in tenant A, and one of tenant B's
    seed_events = SEED_LIST_RESPONSE["events"]
    made = [make_seed_event(runtime, e) for e in seed_events]
    make_event(runtime, tenant_id=TENANT_B)
    # When the seed's curl is run (empty filters included)
    response = client.get(f"{EVENTS}?{SEED_CURL_QUERY.format(tenant=TENANT_A)}", headers=h)
    # Then the answer is the seed's, newest first (the seed's example lists oldest first)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [e["id"] for e in body["events"]] == [str(made[1]["id"]), str(made[0]["id"])]
    assert {e["tenant_id"] for e in body["events"]} == {str(TENANT_A)}
    events = [as_seed(e, s) for e, s in zip(body["events"], reversed(seed_events), strict=True)]
    # (issue 12 adds next_cursor after the seed's fields: null, as this is the last page)
    assert {**body, "events": events} == {
        **SEED_LIST_RESPONSE,
        "events": seed_events[::-1],
        "next_cursor": None,
    }


def test_list_defaults_to_page_1_of_100(client: TestClient, h: dict[str, str]) -> None:
    body = client.get(EVENTS, headers=h).json()

    assert body == {
        "success": True,
        "message": "Events retrieved successfully",
        "events": [],
        "page": 1,
        "limit": 100,
        "total": 0,
        "next_cursor": None,
    }


def test_list_echoes_page_and_limit(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    for _ in range(3):
        make_event(runtime)

    body = client.get(EVENTS, headers=h, params={"page": "2", "limit": "2"}).json()

    assert (body["page"], body["limit"], body["total"], len(body["events"])) == (2, 2, 3, 1)


@pytest.mark.parametrize("page", ["0", "-1", "abc", "1.5", "1e3", "\u0661", "10000000000", " 1"])
def test_list_with_a_bad_page(client: TestClient, h: dict[str, str], page: str) -> None:
    assert_envelope(client.get(EVENTS, headers=h, params={"page": page}), 400, "Invalid page")


@pytest.mark.parametrize("limit", ["0", "1001", "-5", "ten", "100.0"])
def test_list_with_a_bad_limit(client: TestClient, h: dict[str, str], limit: str) -> None:
    assert_envelope(client.get(EVENTS, headers=h, params={"limit": limit}), 400, "Invalid limit")


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_list_limit_bounds(client: TestClient, h: dict[str, str], limit: str) -> None:
    response = client.get(EVENTS, headers=h, params={"limit": limit})

    assert response.json()["limit"] == int(limit)


@pytest.mark.parametrize("status", ["done", "PENDING", "pending,failed"])
def test_list_with_a_bad_status_filter(client: TestClient, h: dict[str, str], status: str) -> None:
    assert_envelope(client.get(EVENTS, headers=h, params={"status": status}), 400, "Invalid status")


@pytest.mark.parametrize("tenant_id", ["not-a-uuid", "tenant-uuid", "{{tenant_id}}"])
def test_list_with_a_bad_tenant_id(client: TestClient, h: dict[str, str], tenant_id: str) -> None:
    response = client.get(EVENTS, headers=h, params={"tenant_id": tenant_id})

    assert_envelope(response, 400, "Invalid tenant_id")


@pytest.mark.parametrize("name", ["event_type", "source_module", "target_module", "entity_type"])
def test_list_with_a_nul_in_a_filter(client: TestClient, h: dict[str, str], name: str) -> None:
    # PostgreSQL refuses a NUL in any text parameter: it must not turn into a 500.
    response = client.get(EVENTS, headers=h, params={name: "a\x00b"})

    assert_envelope(response, 400, f"Invalid {name}")


def test_empty_filter_values_mean_no_filter(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    make_event(runtime, status="processed")
    make_event(runtime, event_type="other", target_module="billing")
    empty = dict.fromkeys(
        ["tenant_id", "event_type", "source_module", "target_module", "status", "entity_type"], ""
    )

    body = client.get(EVENTS, headers=h, params={**empty, "page": "", "limit": ""}).json()

    assert (body["total"], body["page"], body["limit"]) == (2, 1, 100)


def test_timestamps_are_rfc3339_utc(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    # Given an event stored from times in another zone
    east = datetime(2023, 4, 1, 12, 0, 0, 123456, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=5, minutes=30))
    )
    make_event(
        runtime, created_at=east, processed_at=east + timedelta(minutes=1), status="processed"
    )

    event = client.get(EVENTS, headers=h).json()["events"][0]

    assert event["created_at"] == "2023-04-01T12:00:00.123456Z"
    assert event["processed_at"] == "2023-04-01T12:01:00.123456Z"


# --- The envelope, whatever goes wrong -------------------------------------------------------


def test_an_unknown_route(client: TestClient, h: dict[str, str]) -> None:
    response = client.get("/system/nothing", headers=h)

    assert_envelope(response, 404, "Not Found")


@pytest.mark.parametrize(("method", "path"), [("DELETE", EVENTS), ("PATCH", f"{EVENTS}/x")])
def test_a_wrong_method(client: TestClient, h: dict[str, str], method: str, path: str) -> None:
    response = client.request(method, path, headers=h)

    assert_envelope(response, 405, "Method Not Allowed")
    assert response.headers["allow"]


def test_a_parameter_type_error_is_a_400_not_a_422() -> None:
    # Given a tiny app with the bus's error handlers and a typed path and query parameter
    app = FastAPI()
    api_errors.install(app)

    @app.get("/items/{item_id}")
    def item(item_id: int, size: int = 1) -> dict[str, int]:
        return {"item_id": item_id, "size": size}

    client = TestClient(app)
    # When FastAPI's own validation refuses them, then they are the envelope's 400s
    assert_envelope(client.get("/items/x"), 400, "Invalid item_id")
    assert_envelope(client.get("/items/1?size=big"), 400, "Invalid size")
    assert client.get("/items/1?size=2").json() == {"item_id": 1, "size": 2}


def test_an_unexpected_error_is_a_bare_500(
    client: TestClient, h: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a service that fails with a message a client must never see
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("password=hunter2 at /srv/eventbus/secret.py line 7")

    monkeypatch.setattr(listing, "list_events", broken)
    # When it is called through the API
    response = client.get(EVENTS, headers=h)
    # Then the client sees the seed's 500 and nothing of the failure
    assert_envelope(response, 500, "Internal server error")
    assert "hunter2" not in response.text and "Traceback" not in response.text


def test_an_unexpected_error_in_a_tiny_app_is_a_bare_500() -> None:
    app = FastAPI()
    api_errors.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise KeyError("internal detail")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")

    assert_envelope(response, 500, "Internal server error")
    assert "internal detail" not in response.text


@pytest.mark.parametrize(
    ("method", "path"), [("GET", EVENTS), ("POST", EVENTS), ("PUT", f"{EVENTS}/{NO_SUCH_EVENT}")]
)
@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "Authentication required"),
        ("Basic dXNlcjpwYXNz", "Authentication required"),
        ("Bearer ", "Authentication required"),
        ("Bearer not.a.token", "Invalid token"),
    ],
)
def test_401_asks_for_a_bearer_token(
    client: TestClient, method: str, path: str, authorization: str | None, message: str
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}

    response = client.request(method, path, headers=headers, json=SEED_PUBLISH_BODY)

    assert_envelope(response, 401, message)
    assert response.headers["www-authenticate"] == "Bearer"
