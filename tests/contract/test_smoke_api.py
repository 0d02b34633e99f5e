"""A first end-to-end pass through the API on PostgreSQL: publish, list, update (the other
contract tests go further)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TokenFactory, auth


def test_publish_list_update(client: TestClient, token: TokenFactory) -> None:
    h = auth(token())
    created = client.post("/system/events", headers=h, json=SEED_PUBLISH_BODY)
    assert created.status_code == 201, created.text
    event = created.json()["event"]
    assert event["status"] == "pending" and event["retry_count"] == 0

    listed = client.get("/system/events", headers=h).json()
    assert listed["total"] == 1 and listed["events"][0]["id"] == event["id"]

    updated = client.put(f"/system/events/{event['id']}", headers=h, json={"status": "processed"})
    assert updated.status_code == 200
    assert updated.json()["event"]["processed_at"].endswith("Z")
