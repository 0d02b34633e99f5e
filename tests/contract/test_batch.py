"""``POST /system/events/batch`` (all or nothing, one INSERT, one commit, one message per
module) and group commit of concurrent single publishes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event
from sqlalchemy import text

from api.app import create_app
from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.queues import queued
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

BATCH = "/system/events/batch"
EVENT_FIELDS = list(json.loads(json.dumps(SEED_PUBLISH_BODY)))


def item(n: int, module: str = "warehouse", **over: Any) -> dict[str, Any]:
    return {**SEED_PUBLISH_BODY, "target_module": module, "entity_id": f"item-{n}", **over}


def count(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM system_events")).scalar_one())


def test_a_batch_is_stored_in_order_and_sent_as_one_message_per_module(
    client: TestClient, token: TokenFactory, runtime: Runtime, settings: Settings
) -> None:
    # Given 5 events for warehouse and 2 for notifications, interleaved
    items = [item(n, "warehouse" if n % 3 else "notifications") for n in range(7)]
    # When they are published in one batch
    response = client.post(BATCH, headers=auth(token()), json={"events": items})
    # Then every event is answered in the seed's shape, in the order sent, pending
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["success"], body["message"]) == (True, "Events published successfully")
    events = body["events"]
    assert [e["entity_id"] for e in events] == [i["entity_id"] for i in items]
    assert all(e["status"] == "pending" and e["tenant_id"] == str(TENANT_A) for e in events)
    assert all(list(e)[:6] == ["id", "tenant_id", *EVENT_FIELDS[:4]] for e in events)
    assert count(runtime) == 7
    # And each module got one message carrying its ids
    by_module = Counter(e["target_module"] for e in events)
    for module, n in by_module.items():
        (ids,) = queued(settings, module)
        assert ids == [e["id"] for e in events if e["target_module"] == module]
        assert len(ids) == n


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"events": []}, "Field required events"),
        ({}, "Field required events"),
        ({"events": None}, "Field required events"),
        ({"events": "x"}, "Events must be array"),
        ({"events": {"a": 1}}, "Events must be array"),
        (
            {"events": [item(0), item(1), {**item(2), "entity_id": ""}]},
            "events[2]: Field required entity_id",
        ),
        (
            {"events": [item(0), {**item(1), "event_data": []}]},
            "events[1]: Event data must be object",
        ),
        (
            {"events": [item(0), {**item(1), "target_module": "Bad Name"}]},
            "events[1]: Invalid target_module",
        ),
        ({"events": [7]}, "events[0]: Invalid JSON body"),
        ([item(0)], "Invalid JSON body"),
    ],
    ids=repr,
)
def test_an_invalid_batch_stores_nothing(
    client: TestClient, token: TokenFactory, runtime: Runtime, body: Any, message: str
) -> None:
    response = client.post(BATCH, headers=auth(token()), json=body)
    assert (response.status_code, response.json()) == (400, {"success": False, "message": message})
    assert count(runtime) == 0


def test_a_batch_over_the_cap_is_refused(token: TokenFactory, settings: Settings) -> None:
    small = Runtime(settings.model_copy(update={"max_batch": 3}))
    try:
        with TestClient(create_app(runtime=small)) as client:
            response = client.post(
                BATCH, headers=auth(token()), json={"events": [item(n) for n in range(4)]}
            )
            assert (response.status_code, response.json()["message"]) == (400, "Too many events")
            ok = client.post(
                BATCH, headers=auth(token()), json={"events": [item(n) for n in range(3)]}
            )
            assert ok.status_code == 201
    finally:
        small.close()


def test_a_batch_follows_the_publish_rights_and_tenancy(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    # A reader may not publish; a writer publishes into its own tenant, whatever it names
    reader = token(permissions=["read:events"])
    refused = client.post(BATCH, headers=auth(reader), json={"events": [item(0)]})
    assert (refused.status_code, refused.json()["message"]) == (403, "Insufficient permissions")
    no_token = client.post(BATCH, json={"events": [item(0)]})
    assert no_token.status_code == 401
    other = client.post(
        BATCH,
        headers=auth(token()),
        params={"tenant_id": str(TENANT_B)},
        json={"events": [item(0)]},
    )
    assert (other.status_code, other.json()["message"]) == (403, "Insufficient permissions")
    # A system admin publishes into the tenant it names
    admin = client.post(
        BATCH,
        headers=auth(token(tenant=None, admin=True)),
        params={"tenant_id": str(TENANT_B)},
        json={"events": [item(0)]},
    )
    assert admin.status_code == 201
    assert admin.json()["events"][0]["tenant_id"] == str(TENANT_B)
    assert count(runtime) == 1


def test_a_batch_is_one_insert_and_one_commit(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split(maxsplit=1)[0].upper())

    sa_event.listen(runtime.engine, "before_cursor_execute", seen)
    try:
        response = client.post(
            BATCH, headers=auth(token()), json={"events": [item(n) for n in range(50)]}
        )
    finally:
        sa_event.remove(runtime.engine, "before_cursor_execute", seen)
    assert response.status_code == 201
    assert statements.count("INSERT") == 1, statements
    assert count(runtime) == 50


def test_concurrent_publishes_share_commits_and_each_gets_its_own_answer(
    token: TokenFactory, runtime: Runtime, settings: Settings
) -> None:
    # Given an API whose publishes wait up to 2 ms for company
    grouped = Runtime(settings.model_copy(update={"publish_batch_window_ms": 2.0}))
    commits: list[int] = []
    sa_event.listen(grouped.engine, "commit", lambda _c: commits.append(1))
    app = create_app(runtime=grouped)
    bodies = [item(n) for n in range(60)] + [{**item(99), "entity_id": ""}]

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(
                *(client.post("/system/events", headers=auth(token()), json=b) for b in bodies)
            )

    try:
        responses = asyncio.run(send_all())
    finally:
        grouped.close()
    # Then each valid one is answered 201 with its own event, the bad one alone 400
    assert [r.status_code for r in responses] == [201] * 60 + [400]
    assert responses[-1].json()["message"] == "Field required entity_id"
    ids = [r.json()["event"]["id"] for r in responses[:60]]
    assert len(set(ids)) == 60
    assert [r.json()["event"]["entity_id"] for r in responses[:60]] == [
        f"item-{n}" for n in range(60)
    ]
    assert count(runtime) == 60
    # And fewer commits than publishes were needed
    assert len(commits) < 60, len(commits)


def test_a_failed_group_commit_answers_each_publish_on_its_own(
    token: TokenFactory, runtime: Runtime, settings: Settings
) -> None:
    # Given a group of publishes one of which breaks a constraint only the database checks
    grouped = Runtime(settings.model_copy(update={"publish_batch_window_ms": 2.0}))
    app = create_app(runtime=grouped)
    with grouped.engine.begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE system_events ADD CONSTRAINT ck_test_no_poison "
                "CHECK (entity_id <> 'db-refuses')"
            )
        )
    bodies = [item(n) for n in range(10)] + [{**item(0), "entity_id": "db-refuses"}]

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(
                *(client.post("/system/events", headers=auth(token()), json=b) for b in bodies)
            )

    try:
        responses = asyncio.run(send_all())
    finally:
        with grouped.engine.begin() as conn:
            conn.execute(text("ALTER TABLE system_events DROP CONSTRAINT ck_test_no_poison"))
        grouped.close()
    # Then the others are stored and answered 201; only the refused one fails
    assert [r.status_code for r in responses] == [201] * 10 + [500]
    assert responses[-1].json() == {"success": False, "message": "Internal server error"}
    assert count(runtime) == 10


def test_published_ids_are_uuids(client: TestClient, token: TokenFactory) -> None:
    response = client.post(BATCH, headers=auth(token()), json={"events": [item(0)]})
    assert uuid.UUID(response.json()["events"][0]["id"])
