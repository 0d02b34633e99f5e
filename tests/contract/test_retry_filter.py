"""``retry_scheduled``: the list's (and the replay's) filter for failed events with and without
an automatic retry to come, so the stats' "retry scheduled" and "gave up" each have a list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bus.maintenance.counts import fold_counts
from bus.runtime import Runtime
from tests.support.factories import event_values, make_events
from tests.support.tokens import TENANT_B, TokenFactory, auth

EVENTS = "/system/events"


@pytest.fixture
def made(runtime: Runtime) -> dict[str, list[str]]:
    """Tenant A: 3 failed with a retry to come, 5 that gave up (2 of them in logistics, 1 made
    after a fold), 2 pending, 1 processed; tenant B: 2 failed with a retry to come."""
    soon = datetime.now(UTC) + timedelta(minutes=5)
    due = [event_values(status="failed", retry_count=1, next_attempt_at=soon) for _ in range(3)]
    gave_up = [event_values(status="failed", retry_count=5) for _ in range(2)] + [
        event_values(status="failed", retry_count=5, target_module="logistics") for _ in range(2)
    ]
    others = [event_values() for _ in range(2)] + [event_values(status="processed")]
    b = [event_values(tenant_id=TENANT_B, status="failed", next_attempt_at=soon) for _ in range(2)]
    make_events(runtime, [*due, *gave_up, *others, *b])
    fold_counts(runtime)  # half the counts folded: the totals hold either way
    gave_up += make_events(runtime, [event_values(status="failed", retry_count=5)])
    return {
        "due": [str(r["id"]) for r in due],
        "gave_up": [str(r["id"]) for r in gave_up],
        "others": [str(r["id"]) for r in others],
    }


def listed(client: TestClient, tok: str, **params: str) -> dict[str, Any]:
    response = client.get(EVENTS, headers=auth(tok), params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.parametrize(
    ("params", "total"),
    [
        ({"retry_scheduled": "true"}, 3),
        ({"retry_scheduled": "true", "status": "failed"}, 3),
        ({"retry_scheduled": "true", "status": "pending"}, 0),
        ({"retry_scheduled": "false", "status": "failed"}, 5),
        ({"retry_scheduled": "false", "status": "failed", "target_module": "logistics"}, 2),
        ({"retry_scheduled": "false"}, 8),
        ({"retry_scheduled": ""}, 11),
    ],
)
def test_the_list_filters_and_counts_exactly(
    client: TestClient,
    token: TokenFactory,
    made: dict[str, list[str]],
    params: dict[str, str],
    total: int,
) -> None:
    # A limit of 2 makes the total come from the counts, not from a short page
    page = listed(client, token(), limit="2", **params)
    assert page["total"] == total
    everything = listed(client, token(), limit="1000", **params)
    assert len(everything["events"]) == total
    if params.get("retry_scheduled") == "true" and total:
        assert {e["id"] for e in everything["events"]} == set(made["due"])
        assert {e["status"] for e in everything["events"]} <= {"failed"}


def test_a_cursor_walk_keeps_the_filter(
    client: TestClient, token: TokenFactory, made: dict[str, list[str]]
) -> None:
    seen: list[str] = []
    page = listed(client, token(), limit="2", status="failed", retry_scheduled="false")
    while True:
        seen += [e["id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        page = listed(
            client,
            token(),
            limit="2",
            status="failed",
            retry_scheduled="false",
            cursor=page["next_cursor"],
        )
    assert len(seen) == len(set(seen)) == 5
    assert not set(seen) & set(made["due"])
    # A cursor is bound to its filters: the same one without the filter is refused
    first = listed(client, token(), limit="2", status="failed", retry_scheduled="false")
    other = client.get(
        EVENTS,
        headers=auth(token()),
        params={"limit": "2", "status": "failed", "cursor": first["next_cursor"]},
    )
    assert other.status_code == 400
    assert other.json() == {"success": False, "message": "Invalid cursor"}


@pytest.mark.parametrize("value", ["yes", "TRUE", "1", "true ", "null"])
def test_other_values_are_refused(client: TestClient, token: TokenFactory, value: str) -> None:
    response = client.get(EVENTS, headers=auth(token()), params={"retry_scheduled": value})

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": "Invalid retry_scheduled"}


@pytest.mark.parametrize("flag", [False, "false"])
def test_a_replay_of_the_events_that_gave_up(
    client: TestClient, token: TokenFactory, made: dict[str, list[str]], flag: bool | str
) -> None:
    body = {"status": "failed", "retry_scheduled": flag}
    preview = client.post(f"{EVENTS}/replay", headers=auth(token()), json={**body, "dry_run": True})
    assert preview.status_code == 200, preview.text
    assert (preview.json()["matched"], preview.json()["replayed"]) == (5, 0)

    done = client.post(f"{EVENTS}/replay", headers=auth(token()), json=body)

    assert (done.json()["matched"], done.json()["replayed"]) == (5, 5)
    still_due = listed(client, token(), limit="1000", retry_scheduled="true")
    assert {e["id"] for e in still_due["events"]} == set(made["due"])  # untouched
    assert listed(client, token(), status="failed", retry_scheduled="false")["total"] == 0


def test_a_replay_refuses_other_values(client: TestClient, token: TokenFactory) -> None:
    for flag in ("yes", 1, [], {}):
        response = client.post(
            f"{EVENTS}/replay", headers=auth(token()), json={"retry_scheduled": flag}
        )
        assert response.status_code == 400, flag
        assert response.json() == {"success": False, "message": "Invalid retry_scheduled"}
