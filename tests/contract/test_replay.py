"""``POST /system/events/replay`` (issue 12, item 4): the ``PUT … pending`` rule for every
event a filter matches, in batches; a dry run changes nothing."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app
from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.envelope import assert_envelope
from tests.support.factories import event_values, make_events
from tests.support.queues import queued
from tests.support.services import make_settings
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

REPLAY = "/system/events/replay"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def failed(n: int, **over: Any) -> list[dict[str, Any]]:
    """``n`` failed events of tenant A for warehouse, a second apart from T0."""
    return [
        event_values(
            created_at=T0 + timedelta(seconds=i),
            status="failed",
            retry_count=3,
            error_message="boom",
            dispatched_at=T0,
            **over,
        )
        for i in range(n)
    ]


def statuses(runtime: Runtime) -> Counter[tuple[str, str, str]]:
    """(tenant, module, status) of every event, counted."""
    with runtime.engine.connect() as conn:
        rows = conn.execute(text("SELECT tenant_id, target_module, status FROM system_events"))
        return Counter((str(t), m, s) for t, m, s in rows)


def snapshot(runtime: Runtime) -> list[tuple[Any, ...]]:
    with runtime.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT * FROM system_events ORDER BY id"))]


def writer(token: TokenFactory) -> dict[str, str]:
    return auth(token(system=True))


def test_a_dry_run_counts_and_changes_nothing(
    client: TestClient, runtime: Runtime, settings: Settings, token: TokenFactory
) -> None:
    # Given 7 failed warehouse events, 3 failed billing ones and 4 processed warehouse ones
    make_events(runtime, failed(7) + failed(3, target_module="billing"))
    make_events(runtime, (event_values(status="processed") for _ in range(4)))
    before = snapshot(runtime)
    # When a dry run of failed warehouse events is asked for
    response = client.post(
        REPLAY,
        headers=writer(token),
        json={"status": "failed", "target_module": "warehouse", "dry_run": True},
    )
    # Then it answers the exact count, and no row nor queue changed
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "message": "Replay preview",
        "matched": 7,
        "replayed": 0,
    }
    assert snapshot(runtime) == before
    assert queued(settings, "warehouse") == []


def test_a_replay_sets_pending_and_sends_one_message_per_module_per_batch(
    client: TestClient, runtime: Runtime, settings: Settings, token: TokenFactory
) -> None:
    # Given 7 failed warehouse events, 3 failed billing ones and a processed one
    rows = make_events(runtime, failed(7) + failed(3, target_module="billing"))
    make_events(runtime, [event_values(status="processed")])
    # When failed events are replayed (no module named)
    response = client.post(REPLAY, headers=writer(token), json={"status": "failed"})
    # Then all ten are pending again, the PUT's rule (no processed_at, retry_count kept)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "message": "Events replayed successfully",
        "matched": 10,
        "replayed": 10,
    }
    assert statuses(runtime) == Counter(
        {
            (str(TENANT_A), "warehouse", "pending"): 7,
            (str(TENANT_A), "billing", "pending"): 3,
            (str(TENANT_A), "warehouse", "processed"): 1,
        }
    )
    with runtime.engine.connect() as conn:
        kept = conn.execute(
            text(
                "SELECT DISTINCT retry_count, processed_at FROM system_events "
                "WHERE status = 'pending'"
            )
        ).all()
    assert [tuple(k) for k in kept] == [(3, None)]
    # And each module got one message holding its ids, oldest first
    ids = [str(r["id"]) for r in rows]
    assert queued(settings, "warehouse") == [ids[:7]]
    assert queued(settings, "billing") == [ids[7:]]


def test_a_replay_goes_in_batches_and_honours_max(
    runtime: Runtime, database_url: str, token: TokenFactory
) -> None:
    # Given 25 failed events and batches of 10
    small = make_settings(database_url, dispatch_batch_size=10)
    rows = make_events(runtime, failed(25))
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        # When at most 23 are replayed
        response = client.post(REPLAY, headers=writer(token), json={"status": "failed", "max": 23})
    # Then 23 of the 25 matched were, the oldest, in three batches (three messages)
    assert response.json()["matched"] == 25
    assert response.json()["replayed"] == 23
    ids = [str(r["id"]) for r in rows]
    assert queued(small, "warehouse") == [ids[0:10], ids[10:20], ids[20:23]]
    assert statuses(runtime)[(str(TENANT_A), "warehouse", "failed")] == 2


def test_a_replay_of_pending_events_replays_each_once(
    runtime: Runtime, database_url: str, token: TokenFactory
) -> None:
    # Given 12 pending events, which still match once replayed, and batches of 5
    small = make_settings(database_url, dispatch_batch_size=5)
    rows = make_events(runtime, (event_values(created_at=T0 + timedelta(i)) for i in range(12)))
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        response = client.post(REPLAY, headers=writer(token), json={"status": "pending"})
    # Then each was sent once: the batches walk on past the last one
    assert (response.json()["matched"], response.json()["replayed"]) == (12, 12)
    sent = [i for message in queued(small, "warehouse") for i in message]
    assert sent == [str(r["id"]) for r in rows]


def test_created_after_and_before_bound_a_replay(
    client: TestClient, runtime: Runtime, settings: Settings, token: TokenFactory
) -> None:
    # Given failed events a second apart from T0
    rows = make_events(runtime, failed(10))
    # When those created in [T0+3s, T0+7s) are replayed (one bound in another zone)
    body = {
        "status": "failed",
        "created_after": "2024-01-01T00:00:03Z",
        "created_before": "2024-01-01T01:00:07+01:00",
    }
    preview = client.post(REPLAY, headers=writer(token), json={**body, "dry_run": True})
    response = client.post(REPLAY, headers=writer(token), json=body)
    # Then exactly those four are
    assert preview.json()["matched"] == 4
    assert (response.json()["matched"], response.json()["replayed"]) == (4, 4)
    assert queued(settings, "warehouse") == [[str(r["id"]) for r in rows[3:7]]]


def test_another_tenants_filter_matches_nothing(
    client: TestClient, runtime: Runtime, settings: Settings, token: TokenFactory
) -> None:
    # Given failed events of tenant B only
    make_events(runtime, failed(5, tenant_id=TENANT_B))
    # When tenant A's writer replays failed events, naming no tenant and then its own
    for params in ({}, {"tenant_id": str(TENANT_A)}):
        response = client.post(REPLAY, headers=writer(token), params=params, json={})
        # Then nothing matches, nothing is replayed
        assert (response.json()["matched"], response.json()["replayed"]) == (0, 0)
    # And naming tenant B is refused, as for a PUT
    refused = client.post(
        REPLAY, headers=writer(token), params={"tenant_id": str(TENANT_B)}, json={}
    )
    assert_envelope(refused, 403, "Insufficient permissions")
    assert statuses(runtime) == Counter({(str(TENANT_B), "warehouse", "failed"): 5})
    assert queued(settings, "warehouse") == []


def test_a_system_admin_replays_one_tenant_or_all(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    make_events(runtime, failed(3) + failed(2, tenant_id=TENANT_B))
    admin = auth(token(None, [], admin=True))

    one = client.post(
        REPLAY, headers=admin, params={"tenant_id": str(TENANT_B)}, json={"dry_run": True}
    )
    every = client.post(REPLAY, headers=admin, json={"status": "failed"})

    assert one.json()["matched"] == 2
    assert (every.json()["matched"], every.json()["replayed"]) == (5, 5)


@pytest.mark.parametrize(
    ("kind", "status"),
    [("reader", 403), ("no permission", 403), ("no token", 401)],
)
def test_a_replay_needs_a_writer(
    client: TestClient, runtime: Runtime, token: TokenFactory, kind: str, status: int
) -> None:
    make_events(runtime, failed(2))
    headers = {
        "reader": auth(token(permissions=["read:system"])),
        "no permission": auth(token(permissions=[])),
        "no token": {},
    }[kind]

    response = client.post(REPLAY, headers=headers, json={"status": "failed"})

    message = "Insufficient permissions" if status == 403 else "Authentication required"
    assert_envelope(response, status, message)
    assert statuses(runtime) == Counter({(str(TENANT_A), "warehouse", "failed"): 2})


def test_a_manage_system_user_may_replay(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    make_events(runtime, failed(2))

    response = client.post(REPLAY, headers=auth(token()), json={"status": "failed"})

    assert response.json()["replayed"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "Invalid JSON body"),
        ("failed", "Invalid JSON body"),
        ({"stauts": "failed"}, "Unknown body field"),
        ({"tenant_id": str(TENANT_A)}, "Unknown body field"),
        ({"status": "done"}, "Invalid status"),
        ({"status": 3}, "Invalid status"),
        ({"event_type": 5}, "Invalid event_type"),
        ({"target_module": ["warehouse"]}, "Invalid target_module"),
        ({"entity_type": "a\x00b"}, "Invalid entity_type"),
        ({"source_module": "a\nb"}, "Invalid source_module"),
        ({"created_after": "yesterday"}, "Invalid created_after"),
        ({"created_after": "2024-01-01"}, "Invalid created_after"),
        ({"created_after": ""}, "Invalid created_after"),
        ({"created_before": "2024-02-30T00:00:00Z"}, "Invalid created_before"),
        ({"created_before": 1700000000}, "Invalid created_before"),
        ({"dry_run": "yes"}, "Invalid dry_run"),
        ({"dry_run": 1}, "Invalid dry_run"),
        ({"max": 0}, "Invalid max"),
        ({"max": 100_001}, "Invalid max"),
        ({"max": "10"}, "Invalid max"),
        ({"max": 1.5}, "Invalid max"),
        ({"max": 1e6}, "Invalid max"),
        ({"max": True}, "Invalid max"),
    ],
)
def test_a_bad_body_is_refused_in_the_envelope(
    client: TestClient, runtime: Runtime, token: TokenFactory, body: Any, message: str
) -> None:
    make_events(runtime, failed(2))

    response = client.post(REPLAY, headers=writer(token), json=body)

    assert_envelope(response, 400, message)
    assert statuses(runtime) == Counter({(str(TENANT_A), "warehouse", "failed"): 2})


def test_a_body_that_is_not_json_is_refused(client: TestClient, token: TokenFactory) -> None:
    response = client.post(REPLAY, headers=writer(token), content=b"{nope")

    assert_envelope(response, 400, "Invalid JSON body")


def test_an_integral_max_may_be_written_as_a_float(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    make_events(runtime, failed(3))

    response = client.post(REPLAY, headers=writer(token), json={"max": 2.0})

    assert (response.json()["matched"], response.json()["replayed"]) == (3, 2)


def test_null_and_empty_values_mean_no_filter_and_the_defaults(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    make_events(runtime, failed(3))
    body = {"status": None, "event_type": "", "created_after": None, "max": None, "dry_run": None}

    response = client.post(REPLAY, headers=writer(token), json=body)

    assert (response.json()["matched"], response.json()["replayed"]) == (3, 3)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("tenant_id", str(TENANT_A))] * 2, "Invalid tenant_id"),
        ([("tenant_id", "not-a-uuid")], "Invalid tenant_id"),
        ([("status", "failed")], "Unknown query parameter"),  # filters go in the body
    ],
)
def test_the_query_takes_only_one_tenant_id(
    client: TestClient,
    runtime: Runtime,
    token: TokenFactory,
    params: list[tuple[str, str]],
    message: str,
) -> None:
    make_events(runtime, failed(2))

    response = client.post(REPLAY, headers=writer(token), params=params, json={})

    assert_envelope(response, 400, message)
    assert statuses(runtime) == Counter({(str(TENANT_A), "warehouse", "failed"): 2})
