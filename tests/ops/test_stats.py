"""GET /system/events/stats: counts by target module and status, the oldest pending event's
age, with the list's rights and tenancy and the error envelope."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bus.runtime import Runtime
from bus.storage.models import EventStatus
from tests.support.factories import event_values, make_events
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

URL = "/system/events/stats"


@pytest.fixture
def seeded(runtime: Runtime) -> datetime:
    """Tenant A: warehouse 2 pending (oldest 10 min), 1 processed, 2 failed (1 retrying);
    notifications 1 processed. Tenant B: warehouse 1 pending (1 h old)."""
    now = datetime.now(UTC)
    later = now + timedelta(seconds=30)
    make_events(
        runtime,
        [
            event_values(created_at=now - timedelta(minutes=10)),
            event_values(created_at=now - timedelta(minutes=1)),
            event_values(status=EventStatus.PROCESSED, processed_at=now),
            event_values(status=EventStatus.FAILED, retry_count=1, next_attempt_at=later),
            event_values(status=EventStatus.FAILED, retry_count=5),
            event_values(target_module="notifications", status=EventStatus.PROCESSED),
            event_values(tenant_id=TENANT_B, created_at=now - timedelta(hours=1)),
        ],
    )
    return now


def stats(client: TestClient, tok: str, **params: str) -> Any:
    response = client.get(URL, headers=auth(tok), params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_counts_by_module_and_status_in_the_callers_tenant(
    client: TestClient, token: TokenFactory, seeded: datetime
) -> None:
    body = stats(client, token())

    assert body["success"] is True
    assert body["message"] == "Event stats retrieved successfully"
    assert body["tenant_id"] == str(TENANT_A)
    assert body["generated_at"].endswith("Z")
    notifications, warehouse = body["modules"]  # sorted by module
    assert warehouse == {
        "target_module": "warehouse",
        "pending": 2,
        "processed": 1,
        "failed": 2,
        "retry_scheduled": 1,
        "total": 5,
        "oldest_pending_age_seconds": pytest.approx(600, abs=30),
    }
    assert notifications == {
        "target_module": "notifications",
        "pending": 0,
        "processed": 1,
        "failed": 0,
        "retry_scheduled": 0,
        "total": 1,
        "oldest_pending_age_seconds": None,
    }
    assert body["totals"] == {
        "pending": 2,
        "processed": 2,
        "failed": 2,
        "retry_scheduled": 1,
        "total": 6,
    }
    assert body["oldest_pending_age_seconds"] == pytest.approx(600, abs=30)


def test_modules_are_sorted_and_an_empty_tenant_has_none(
    client: TestClient, token: TokenFactory, seeded: datetime
) -> None:
    modules = [m["target_module"] for m in stats(client, token())["modules"]]
    assert modules == sorted(modules)

    empty = stats(client, token(tenant=uuid.uuid4()))
    assert empty["modules"] == []
    assert empty["totals"] == dict.fromkeys(
        ("pending", "processed", "failed", "retry_scheduled", "total"), 0
    )
    assert empty["oldest_pending_age_seconds"] is None


def test_a_system_admin_counts_every_tenant_or_the_one_named(
    client: TestClient, token: TokenFactory, seeded: datetime
) -> None:
    every = stats(client, token(tenant=None, admin=True))
    assert every["tenant_id"] is None
    assert every["totals"]["pending"] == 3
    assert every["oldest_pending_age_seconds"] == pytest.approx(3600, abs=30)

    only_b = stats(client, token(tenant=None, admin=True), tenant_id=str(TENANT_B))
    assert only_b["tenant_id"] == str(TENANT_B)
    assert [(m["target_module"], m["pending"]) for m in only_b["modules"]] == [("warehouse", 1)]


@pytest.mark.parametrize(
    ("headers", "params", "status", "message"),
    [
        ({}, {}, 401, "Authentication required"),
        ({"Authorization": "Bearer not-a-jwt"}, {}, 401, "Invalid token"),
        ("system", {}, 403, "Insufficient permissions"),  # may publish, may not read
        ("user", {"tenant_id": str(TENANT_B)}, 403, "Insufficient permissions"),
        ("admin", {"tenant_id": "not-a-uuid"}, 400, "Invalid tenant_id"),
    ],
)
def test_errors_are_the_lists_in_the_envelope(
    client: TestClient,
    token: TokenFactory,
    headers: Any,
    params: dict[str, str],
    status: int,
    message: str,
) -> None:
    if headers == "system":
        headers = auth(token(permissions=[], system=True))
    elif headers == "user":
        headers = auth(token())
    elif headers == "admin":
        headers = auth(token(tenant=None, admin=True))
    response = client.get(URL, headers=headers, params=params)

    assert response.status_code == status
    assert response.json() == {"success": False, "message": message}
    list_response = client.get("/system/events", headers=headers, params=params)
    assert (list_response.status_code, list_response.json()) == (status, response.json())
