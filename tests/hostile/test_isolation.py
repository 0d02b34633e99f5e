"""Tenant isolation, endpoint by endpoint: whatever a caller of tenant A sends, nothing of
tenant B comes back, and nothing of B changes.

The permission matrix (who may call what, own tenant vs ``?tenant_id=B``) is in
tests/contract/test_auth_matrix.py; this adds the ways of naming B that it does not try (other
spellings of B's UUID, a repeated parameter, a ``tenant_id`` in the body, B's event ids with no
tenant named) and scans every answer for B's data, the stats included.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from bus.runtime import Runtime
from tests.support.factories import SEED_PUBLISH_BODY, make_event
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

EVENTS = "/system/events"
SECRET_MARK = "tenant-b-secret-marker"
B_SPELLINGS = [
    str(TENANT_B),
    str(TENANT_B).upper(),
    TENANT_B.hex,
    f"{{{TENANT_B}}}",
    f"urn:uuid:{TENANT_B}",
    f" {TENANT_B}",
    f"{TENANT_B}\t",
]
CALLERS = ("manage:system", "system token")
BODIES: dict[str, Any] = {
    EVENTS: SEED_PUBLISH_BODY,
    f"{EVENTS}/batch": {"events": [SEED_PUBLISH_BODY]},
    f"{EVENTS}/replay": {"status": "failed"},
}


@pytest.fixture
def b_events(runtime: Runtime) -> list[dict[str, Any]]:
    """Tenant B's events, marked so that any leak of them is visible in a response."""
    made = [
        make_event(
            runtime,
            tenant_id=TENANT_B,
            entity_id=SECRET_MARK,
            event_type=f"b_{status}",
            target_module="b_only_module",
            status=status,
            event_data={"mark": SECRET_MARK},
        )
        for status in ("pending", "processed", "failed")
    ]
    make_event(runtime, tenant_id=TENANT_A)
    return made


def header(kind: str, token: TokenFactory) -> dict[str, str]:
    if kind == "system token":
        return auth(token(TENANT_A, [], system=True))
    return auth(token(TENANT_A))


def snapshot(runtime: Runtime) -> list[tuple[Any, ...]]:
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT e.id, e.status, e.retry_count, e.processed_at, e.error_message, "
                "e.dispatched_at, q.dispatched_at FROM system_events e "
                "LEFT JOIN event_queue q ON q.id = e.id WHERE e.tenant_id = :b ORDER BY e.id"
            ),
            {"b": TENANT_B},
        )
        return [tuple(r) for r in rows]


def assert_nothing_of_b(response: Any, b_events: list[dict[str, Any]]) -> None:
    body = response.text
    assert SECRET_MARK not in body, body[:500]
    assert "b_only_module" not in body, body[:500]
    for event in b_events:
        assert str(event["id"]) not in body, body[:500]
    assert str(TENANT_B) not in body.lower(), body[:500]
    assert TENANT_B.hex not in body.lower(), body[:500]


@pytest.mark.parametrize("spelling", B_SPELLINGS, ids=repr)
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", EVENTS),
        ("GET", f"{EVENTS}/stats"),
        ("POST", EVENTS),
        ("POST", f"{EVENTS}/batch"),
        ("POST", f"{EVENTS}/replay"),
        ("PUT", "b_event"),
        ("GET", "b_event"),
    ],
)
def test_naming_tenant_b_in_any_spelling(
    client: TestClient,
    runtime: Runtime,
    token: TokenFactory,
    b_events: list[dict[str, Any]],
    method: str,
    path: str,
    caller: str,
    spelling: str,
) -> None:
    before = snapshot(runtime)
    target = f"{EVENTS}/{b_events[0]['id']}" if path == "b_event" else path
    body = BODIES.get(path, {"status": "processed"})

    response = client.request(
        method,
        target,
        headers=header(caller, token),
        params={"tenant_id": spelling},
        json=None if method == "GET" else body,
    )

    assert response.status_code in (400, 403), response.text
    assert_nothing_of_b(response, b_events)
    assert snapshot(runtime) == before


@pytest.mark.parametrize("order", ["A then B", "B then A"])
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", EVENTS),
        ("GET", f"{EVENTS}/stats"),
        ("POST", EVENTS),
        ("POST", f"{EVENTS}/batch"),
        ("POST", f"{EVENTS}/replay"),
    ],
)
def test_a_repeated_tenant_id(
    client: TestClient,
    runtime: Runtime,
    token: TokenFactory,
    b_events: list[dict[str, Any]],
    method: str,
    path: str,
    caller: str,
    order: str,
) -> None:
    pair = [str(TENANT_A), str(TENANT_B)]
    query = "&".join(f"tenant_id={t}" for t in (pair if order == "A then B" else pair[::-1]))
    before = snapshot(runtime)

    response = client.request(
        method,
        f"{path}?{query}",
        headers=header(caller, token),
        json=BODIES.get(path) if method == "POST" else None,
    )

    # A proxy may read the first where the API would read the last: neither is taken (a
    # system token may not read at all, refused before its query is looked at)
    refused = (
        (403, "Insufficient permissions")
        if method == "GET" and caller == "system token"
        else (400, "Invalid tenant_id")
    )
    assert (response.status_code, response.json()) == (
        refused[0],
        {"success": False, "message": refused[1]},
    )
    assert snapshot(runtime) == before


@pytest.mark.parametrize("caller", CALLERS)
def test_b_events_do_not_exist_for_a(
    client: TestClient,
    runtime: Runtime,
    token: TokenFactory,
    b_events: list[dict[str, Any]],
    caller: str,
) -> None:
    before = snapshot(runtime)
    h = header(caller, token)
    for event in b_events:
        for status in ("processed", "failed", "pending"):
            response = client.put(f"{EVENTS}/{event['id']}", headers=h, json={"status": status})
            assert response.status_code == 404, response.text
            assert_nothing_of_b(response, b_events)
    assert snapshot(runtime) == before


def test_reads_of_a_show_nothing_of_b(
    client: TestClient, runtime: Runtime, token: TokenFactory, b_events: list[dict[str, Any]]
) -> None:
    h = header("manage:system", token)
    queries: list[dict[str, str]] = [
        {},
        {"tenant_id": str(TENANT_A)},
        {"target_module": "b_only_module"},
        {"event_type": "b_pending"},
        {"entity_type": "inventory_item", "limit": "1000"},
        {"status": "failed"},
    ]
    for query in queries:
        # (stats takes tenant_id only: a list filter there is an unknown parameter, issue 9)
        paths = (EVENTS, f"{EVENTS}/stats") if set(query) <= {"tenant_id"} else (EVENTS,)
        for path in paths:
            response = client.get(path, headers=h, params=query)
            assert response.status_code == 200, response.text
            assert_nothing_of_b(response, b_events)
    listed = client.get(EVENTS, headers=h).json()
    assert {e["tenant_id"] for e in listed["events"]} == {str(TENANT_A)}
    stats = client.get(f"{EVENTS}/stats", headers=h).json()
    assert stats["totals"]["total"] == 1


def test_cursor_walks_series_and_details_of_a_show_nothing_of_b(
    client: TestClient, runtime: Runtime, token: TokenFactory, b_events: list[dict[str, Any]]
) -> None:
    h = header("manage:system", token)
    for event in b_events:  # B's events have attempts too: the series must not count them
        client.put(
            f"{EVENTS}/{event['id']}",
            headers=auth(token(TENANT_B)),
            json={"status": "failed", "error_message": SECRET_MARK},
        )
    for filters in ({}, {"target_module": "b_only_module"}, {"status": "failed"}):
        seen: list[str] = []
        response = client.get(EVENTS, headers=h, params={**filters, "limit": "1"})
        while True:
            assert response.status_code == 200, response.text
            assert_nothing_of_b(response, b_events)
            body = response.json()
            seen += [e["id"] for e in body["events"]]
            if body["next_cursor"] is None:
                break
            response = client.get(
                EVENTS, headers=h, params={**filters, "limit": "1", "cursor": body["next_cursor"]}
            )
        assert len(seen) == (1 if not filters else 0)
    series = client.get(f"{EVENTS}/stats", headers=h, params={"series": "minute"})
    assert series.status_code == 200, series.text
    assert series.json()["series"] == []
    assert_nothing_of_b(series, b_events)
    for event in b_events:
        detail = client.get(f"{EVENTS}/{event['id']}", headers=h)
        assert (detail.status_code, detail.json()["message"]) == (404, "Event not found")
        assert_nothing_of_b(detail, b_events)


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_replay_by_as_filters_touches_nothing_of_b(
    client: TestClient,
    runtime: Runtime,
    token: TokenFactory,
    b_events: list[dict[str, Any]],
    dry_run: bool,
) -> None:
    before = snapshot(runtime)
    h = header("manage:system", token)
    for body in (
        {},
        {"status": "failed"},
        {"target_module": "b_only_module"},
        {"event_type": "b_failed", "status": "failed"},
    ):
        response = client.post(f"{EVENTS}/replay", headers=h, json={**body, "dry_run": dry_run})
        assert response.status_code == 200, response.text
        assert response.json()["matched"] == (0 if body else 1)  # A has one pending event
        assert_nothing_of_b(response, b_events)
    assert snapshot(runtime) == before


@pytest.mark.parametrize("caller", CALLERS)
def test_a_tenant_id_in_the_body_is_ignored(
    client: TestClient, runtime: Runtime, token: TokenFactory, caller: str
) -> None:
    body = {**SEED_PUBLISH_BODY, "tenant_id": str(TENANT_B), "id": str(uuid.uuid4())}

    response = client.post(EVENTS, headers=header(caller, token), json=body)

    assert response.status_code == 201, response.text
    assert response.json()["event"]["tenant_id"] == str(TENANT_A)
    assert snapshot(runtime) == []


def test_the_system_token_may_publish_but_not_read(
    client: TestClient, token: TokenFactory, b_events: list[dict[str, Any]]
) -> None:
    h = header("system token", token)
    for path in (EVENTS, f"{EVENTS}/stats"):
        response = client.get(path, headers=h)
        assert response.status_code == 403
        assert_nothing_of_b(response, b_events)
