"""GET /system/events/stats?series=minute: handler attempts per minute and target module by
outcome over the last hour, from the buckets migration 0007's trigger keeps (and, on SQLite,
from the attempts themselves); the relay folds closed minutes and purges old ones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bus.auth import Principal
from bus.maintenance import outcomes
from bus.read.stats import event_stats
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import attempt_store
from bus.storage.attempt_store import Entry, Outcome
from bus.storage.db import transaction
from bus.storage.migrate import upgrade
from bus.storage.models import event_outcome_minutes
from tests.support.factories import event_values, make_events
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

URL = "/system/events/stats"


def minute(at: datetime) -> str:
    return at.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def record(runtime: Runtime, entries: list[Entry]) -> None:
    """Entries appended as the workers append them: one statement, one transaction."""
    with transaction(runtime.sessions) as session:
        attempt_store.record(session, entries)


def series(client: TestClient, tok: str, **params: str) -> list[dict[str, Any]]:
    response = client.get(URL, headers=auth(tok), params={"series": "minute", **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "Event stats retrieved successfully"
    return list(body["series"])


@pytest.fixture
def now() -> datetime:
    # Far enough from a minute's end that "now" and the request fall in one minute.
    at = datetime.now(UTC)
    return at - timedelta(seconds=5) if at.second >= 55 else at


@pytest.fixture
def seeded(runtime: Runtime, now: datetime) -> dict[str, uuid.UUID]:
    """A warehouse and a notifications event of tenant A, a warehouse event of tenant B, with
    attempts now, five minutes ago, and 61 minutes ago (out of the chart)."""
    a, n, b = (
        event_values(),
        event_values(target_module="notifications"),
        event_values(tenant_id=TENANT_B),
    )
    make_events(runtime, [a, n, b])
    five = now - timedelta(minutes=5)
    record(
        runtime,
        [
            Entry(a["id"], Outcome.FAILED, five, error_message="boom"),
            Entry(a["id"], Outcome.FAILED, five),
            Entry(a["id"], Outcome.LOST, now),
            Entry(a["id"], Outcome.PROCESSED, now),
            Entry(n["id"], Outcome.PROCESSED, now),
            Entry(b["id"], Outcome.PROCESSED, now),
            Entry(b["id"], Outcome.FAILED, now - timedelta(minutes=61)),
        ],
    )
    record(runtime, [Entry(n["id"], Outcome.PROCESSED, now)])  # a second statement, same bucket
    return {"a": a["id"], "n": n["id"], "b": b["id"]}


def test_the_last_hour_per_minute_and_module_in_the_callers_tenant(
    client: TestClient, token: TokenFactory, seeded: dict[str, uuid.UUID], now: datetime
) -> None:
    five = now - timedelta(minutes=5)
    assert series(client, token()) == [
        {
            "minute": minute(five),
            "target_module": "warehouse",
            "processed": 0,
            "failed": 2,
            "lost": 0,
        },
        {
            "minute": minute(now),
            "target_module": "notifications",
            "processed": 2,
            "failed": 0,
            "lost": 0,
        },
        {
            "minute": minute(now),
            "target_module": "warehouse",
            "processed": 1,
            "failed": 0,
            "lost": 1,
        },
    ]
    # Tenant B sees only its own; the attempt 61 minutes ago is out of the chart.
    assert series(client, token(tenant=TENANT_B)) == [
        {
            "minute": minute(now),
            "target_module": "warehouse",
            "processed": 1,
            "failed": 0,
            "lost": 0,
        },
    ]
    assert series(client, token(tenant=uuid.uuid4())) == []


def test_a_system_admin_sees_every_tenant_or_the_one_named(
    client: TestClient, token: TokenFactory, seeded: dict[str, uuid.UUID], now: datetime
) -> None:
    admin = token(tenant=None, admin=True)
    every = series(client, admin)
    warehouse_now = [
        p for p in every if p["minute"] == minute(now) and p["target_module"] == "warehouse"
    ]
    assert warehouse_now == [
        {
            "minute": minute(now),
            "target_module": "warehouse",
            "processed": 2,
            "failed": 0,
            "lost": 1,
        }
    ]
    assert series(client, admin, tenant_id=str(TENANT_B)) == series(client, token(tenant=TENANT_B))


def test_no_series_unless_asked_and_a_bad_one_is_the_envelopes_400(
    client: TestClient, token: TokenFactory, seeded: dict[str, uuid.UUID]
) -> None:
    plain = client.get(URL, headers=auth(token()))
    assert plain.status_code == 200
    assert "series" not in plain.json()
    for bad in ("hour", "MINUTE", "minute,hour"):
        response = client.get(URL, headers=auth(token()), params={"series": bad})
        assert response.status_code == 400, bad
        assert response.json() == {"success": False, "message": "Invalid series"}
    twice = client.get(f"{URL}?series=minute&series=minute", headers=auth(token()))
    assert twice.status_code == 400
    assert twice.json()["message"] == "Invalid series"


def test_a_put_that_changes_the_status_counts_in_its_minute(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    event = make_events(runtime, [event_values(target_module="logistics")])[0]
    response = client.put(
        f"/system/events/{event['id']}",
        headers=auth(token()),
        json={"status": "failed", "error_message": "by hand"},
    )
    assert response.status_code == 200, response.text
    points = [p for p in series(client, token()) if p["target_module"] == "logistics"]
    assert [(p["processed"], p["failed"], p["lost"]) for p in points] == [(0, 1, 0)]


def test_the_relay_folds_closed_minutes_and_purges_old_ones(
    runtime: Runtime, client: TestClient, token: TokenFactory, now: datetime
) -> None:
    event = make_events(runtime, [event_values()])[0]
    ten = now - timedelta(minutes=10)
    for _ in range(5):  # five statements: five rows of one bucket
        record(runtime, [Entry(event["id"], Outcome.PROCESSED, ten)])
    record(runtime, [Entry(event["id"], Outcome.FAILED, now - timedelta(hours=3))])
    record(runtime, [Entry(event["id"], Outcome.PROCESSED, now)])
    before = series(client, token())

    def rows() -> int:
        with transaction(runtime.sessions) as session:
            return int(
                session.execute(
                    select(func.count()).select_from(event_outcome_minutes)
                ).scalar_one()
            )

    # The 3-hour-old attempt makes no row: the trigger passes over what the chart never shows
    assert rows() == 6
    outcomes.fold_outcome_minutes(runtime, now)
    # The closed minute's five rows are one, the open one stays.
    assert rows() == 2
    assert series(client, token()) == before
    assert before[0]["processed"] == 5
    outcomes.fold_outcome_minutes(runtime, now)  # folding again changes nothing
    assert rows() == 2


def test_sqlite_buckets_the_attempts_themselves(tmp_path: Path, now: datetime) -> None:
    url = f"sqlite:///{tmp_path / 'eventbus.db'}"
    upgrade(url)
    runtime = Runtime(Settings(database_url=url))
    try:
        event = make_events(runtime, [event_values()])[0]
        record(
            runtime,
            [
                Entry(event["id"], Outcome.FAILED, now - timedelta(minutes=2)),
                Entry(event["id"], Outcome.PROCESSED, now),
                Entry(event["id"], Outcome.PROCESSED, now - timedelta(minutes=90)),
            ],
        )
        admin = Principal("ops", None, frozenset(), is_system_admin=True, token_type="user")
        with transaction(runtime.sessions) as session:
            stats = event_stats(session, admin, str(TENANT_A), "minute", now=now)
        assert stats.series == [
            {
                "minute": minute(now - timedelta(minutes=2)),
                "target_module": "warehouse",
                "processed": 0,
                "failed": 1,
                "lost": 0,
            },
            {
                "minute": minute(now),
                "target_module": "warehouse",
                "processed": 1,
                "failed": 0,
                "lost": 0,
            },
        ]
    finally:
        runtime.close()
