"""Cursor paging (issue 12, item 3): every page carries ``next_cursor``; a walk by cursor
returns each event once while new ones arrive; a cursor is signed for its tenant and filters."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from bus.auth import mint_token
from bus.runtime import Runtime
from tests.support.envelope import assert_envelope
from tests.support.factories import event_values, make_events
from tests.support.services import make_settings
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

EVENTS = "/system/events"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def newest_first(rows: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    return [str(r["id"]) for r in ordered]


def walk(
    client: TestClient, h: dict[str, str], params: dict[str, str], *, each_page: Any = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Every page by cursor from the first; the ids in order and the pages' bodies."""
    bodies: list[dict[str, Any]] = []
    cursor = ""
    while True:
        response = client.get(EVENTS, headers=h, params={**params, "cursor": cursor})
        assert response.status_code == 200, response.text
        body = response.json()
        body["_bytes"] = len(response.content)
        bodies.append(body)
        if each_page is not None:
            each_page(len(bodies))
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
        assert len(bodies) < 100, "the walk does not end"
    return [e["id"] for b in bodies for e in b["events"]], bodies


def test_a_walk_of_250_returns_each_once_while_10_arrive(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    # Given 250 events of tenant A, five to a second (ties broken by id), and tenant B's
    rows = make_events(
        runtime, (event_values(created_at=T0 + timedelta(seconds=i // 5)) for i in range(250))
    )
    make_events(runtime, (event_values(tenant_id=TENANT_B, created_at=T0) for _ in range(20)))
    arrived: list[dict[str, Any]] = []

    def publish_ten_after_the_first_page(page: int) -> None:
        if page == 1:
            arrived.extend(make_events(runtime, (event_values() for _ in range(10))))

    # When they are walked by cursor at limit 100, 10 events being published after page 1
    seen, bodies = walk(
        client, auth(token()), {"limit": "100"}, each_page=publish_ten_after_the_first_page
    )
    # Then the walk held each of the 250 exactly once, newest first, and none of the new ones
    assert seen == newest_first(rows)
    assert not {str(r["id"]) for r in arrived} & set(seen)
    assert [len(b["events"]) for b in bodies] == [100, 100, 50]
    # And total stayed exact, counting the new ones once they were there
    assert [b["total"] for b in bodies] == [250, 260, 260]
    # And pages read by cursor name no page number; the first (no cursor) is page 1
    assert [(b["page"], b["limit"]) for b in bodies] == [(1, 100), (None, 100), (None, 100)]


def test_the_envelope_keeps_the_seeds_fields_then_next_cursor(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    make_events(runtime, (event_values() for _ in range(3)))

    body = client.get(EVENTS, headers=auth(token()), params={"limit": "2"}).json()

    assert list(body) == ["success", "message", "events", "page", "limit", "total", "next_cursor"]
    assert isinstance(body["next_cursor"], str) and body["next_cursor"]


@pytest.mark.parametrize("count", [0, 1, 100])
def test_the_last_page_has_no_next_cursor(
    client: TestClient, runtime: Runtime, token: TokenFactory, count: int
) -> None:
    # Given exactly as many events as fit a page (or fewer)
    make_events(runtime, (event_values() for _ in range(count)))
    # When the only page is read
    body = client.get(EVENTS, headers=auth(token()), params={"limit": "100"}).json()
    # Then it says nothing follows
    assert (len(body["events"]), body["total"], body["next_cursor"]) == (count, count, None)


def test_a_numbered_page_leads_on_by_cursor(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    # Given 30 events, and page 2 of 10 read by number
    rows = make_events(
        runtime, (event_values(created_at=T0 + timedelta(seconds=i)) for i in range(30))
    )
    h = auth(token())
    second = client.get(EVENTS, headers=h, params={"page": "2", "limit": "10"}).json()
    # When its next_cursor is followed
    third = client.get(EVENTS, headers=h, params={"cursor": second["next_cursor"], "limit": "10"})
    # Then it is page 3's events, and the one after it is the last
    order = newest_first(rows)
    assert [e["id"] for e in third.json()["events"]] == order[20:30]
    assert third.json()["next_cursor"] is None
    # And an empty page parameter beside a cursor is no page
    again = client.get(EVENTS, headers=h, params={"cursor": second["next_cursor"], "page": ""})
    assert [e["id"] for e in again.json()["events"]] == order[20:30]


def test_the_limit_may_change_during_a_walk(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    rows = make_events(
        runtime, (event_values(created_at=T0 + timedelta(seconds=i)) for i in range(25))
    )
    h = auth(token())
    first = client.get(EVENTS, headers=h, params={"limit": "5"}).json()

    rest = client.get(EVENTS, headers=h, params={"limit": "20", "cursor": first["next_cursor"]})

    assert [e["id"] for e in first["events"] + rest.json()["events"]] == newest_first(rows)
    assert rest.json()["next_cursor"] is None


def test_a_walk_with_filters_holds_only_their_events(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    # Given failed and pending events of two modules, interleaved in time
    rows = make_events(
        runtime,
        (
            event_values(
                created_at=T0 + timedelta(seconds=i),
                status="failed" if i % 2 else "pending",
                target_module="warehouse" if i % 3 else "billing",
            )
            for i in range(60)
        ),
    )
    params = {"status": "failed", "target_module": "warehouse"}
    # When they are walked 4 at a time with two filters
    seen, bodies = walk(client, auth(token()), {**params, "limit": "4"})
    # Then exactly the matching events come back, once each, newest first
    expected = [r for r in rows if r["status"] == "failed" and r["target_module"] == "warehouse"]
    assert seen == newest_first(expected)
    assert {b["total"] for b in bodies} == {len(expected)}


def test_a_system_admin_walks_every_tenant(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    rows = make_events(
        runtime,
        (
            event_values(tenant_id=(TENANT_A, TENANT_B)[i % 2], created_at=T0 + timedelta(i))
            for i in range(12)
        ),
    )

    seen, _ = walk(client, auth(token(None, [], admin=True)), {"limit": "5"})

    assert seen == newest_first(rows)


def test_a_cut_page_by_cursor_still_walks_every_event_once(
    runtime: Runtime, database_url: str, token: TokenFactory
) -> None:
    # Given 60 events of ~8 KiB and a response cap that holds about 30
    data_bytes = 8 * 1024
    capped = make_settings(
        database_url, max_event_data_bytes=data_bytes, max_response_bytes=256 * 1024 + 128 * 1024
    )
    rows = make_events(
        runtime,
        (
            event_values(created_at=T0 + timedelta(seconds=i), event_data={"blob": "x" * 8000})
            for i in range(60)
        ),
    )
    with TestClient(create_app(capped), raise_server_exceptions=False) as client:
        # When they are walked by cursor at limit 100
        seen, bodies = walk(client, auth(token()), {"limit": "100"})
    # Then every page stayed whole and under the cap, and the walk held each event once
    assert seen == newest_first(rows)
    assert len(bodies) >= 2
    for body in bodies:
        assert body["_bytes"] <= capped.max_response_bytes
        assert body["limit"] == len(body["events"]) or body["next_cursor"] is None


# --- a cursor that is not one of ours --------------------------------------------------------


@pytest.fixture
def cursor(client: TestClient, runtime: Runtime, h: dict[str, str]) -> str:
    """A good cursor of tenant A, no filters, over 5 events at limit 2."""
    make_events(runtime, (event_values(created_at=T0 + timedelta(seconds=i)) for i in range(5)))
    value = client.get(EVENTS, headers=h, params={"limit": "2"}).json()["next_cursor"]
    assert isinstance(value, str)
    ok = client.get(EVENTS, headers=h, params={"limit": "2", "cursor": value})
    assert ok.status_code == 200
    return value


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_every_altered_character_is_an_invalid_cursor(
    client: TestClient, h: dict[str, str], cursor: str
) -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(cursor):
        other = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        altered = cursor[:i] + other + cursor[i + 1 :]
        response = client.get(EVENTS, headers=h, params={"cursor": altered})
        assert_envelope(response, 400, "Invalid cursor")


def test_a_flipped_bit_in_the_decoded_cursor_is_invalid(
    client: TestClient, h: dict[str, str], cursor: str
) -> None:
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        response = client.get(EVENTS, headers=h, params={"cursor": _b64(bytes(flipped))})
        assert_envelope(response, 400, "Invalid cursor")


@pytest.mark.parametrize(
    "garbage",
    [
        "x",
        "garbage",
        "!!!!",
        "a b",
        "%00",
        "é",
        "A" * 54,
        "A" * 10_000,
        _b64(b"\x00" * 40),
        _b64(json.dumps({"created_at": "2024-01-01T00:00:00Z", "id": str(uuid.uuid4())}).encode()),
        _b64(b"\x01" + bytes(39)),
        base64.b64encode(bytes(40)).decode(),  # padded, standard alphabet
    ],
)
def test_garbage_is_an_invalid_cursor(
    client: TestClient, h: dict[str, str], cursor: str, garbage: str
) -> None:
    assert_envelope(
        client.get(EVENTS, headers=h, params={"cursor": garbage}), 400, "Invalid cursor"
    )


def test_a_cursor_with_a_page_is_invalid(
    client: TestClient, h: dict[str, str], cursor: str
) -> None:
    for page in ("1", "2"):
        response = client.get(EVENTS, headers=h, params={"cursor": cursor, "page": page})
        assert_envelope(response, 400, "Invalid cursor")


@pytest.mark.parametrize(
    "params",
    [
        {"status": "pending"},
        {"event_type": "inventory_updated"},
        {"target_module": "warehouse", "source_module": "inventory"},
        {"entity_type": "inventory_item"},
    ],
)
def test_a_cursor_of_another_filter_set_is_invalid(
    client: TestClient, h: dict[str, str], cursor: str, params: dict[str, str]
) -> None:
    # The filters match the very same events: the cursor is still another list's.
    response = client.get(EVENTS, headers=h, params={**params, "cursor": cursor})
    assert_envelope(response, 400, "Invalid cursor")


def test_a_cursor_of_another_tenant_is_invalid(
    client: TestClient, runtime: Runtime, token: TokenFactory, cursor: str
) -> None:
    make_events(runtime, (event_values(tenant_id=TENANT_B) for _ in range(5)))
    # A reader of tenant B, and a system admin naming B or no tenant: none may walk A's cursor
    for headers, params in (
        (auth(token(TENANT_B)), {}),
        (auth(token(None, [], admin=True)), {"tenant_id": str(TENANT_B)}),
        (auth(token(None, [], admin=True)), {}),
    ):
        response = client.get(EVENTS, headers=headers, params={**params, "cursor": cursor})
        assert_envelope(response, 400, "Invalid cursor")
    # And the admin naming tenant A may
    admin_a = client.get(
        EVENTS,
        headers=auth(token(None, [], admin=True)),
        params={"tenant_id": str(TENANT_A), "cursor": cursor, "limit": "2"},
    )
    assert admin_a.status_code == 200, admin_a.text


def test_a_cursor_signed_with_another_secret_is_invalid(
    runtime: Runtime, database_url: str, token: TokenFactory, client: TestClient, cursor: str
) -> None:
    secret = "another-secret-long-enough-for-hs256-abcdefghij"
    other = make_settings(database_url, jwt_secret=secret)
    # Given an app whose secret is another (its own token, as it refuses the test secret's)
    minted = mint_token(
        other.jwt_secret, sub="t", tenant_id=TENANT_A, permissions=["manage:system"]
    )
    with TestClient(create_app(other), raise_server_exceptions=False) as elsewhere:
        # When tenant A's cursor from this app is given to it
        response = elsewhere.get(EVENTS, headers=auth(minted), params={"cursor": cursor})
    # Then it is not one of its own
    assert_envelope(response, 400, "Invalid cursor")
