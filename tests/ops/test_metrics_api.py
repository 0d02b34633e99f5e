"""The API's /metrics: counters move by exactly what was sent, publishes count only once
committed, request latency is labelled by route template, the backlog is read at scrape time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest

from bus.auth import Principal
from bus.publish import service
from bus.runtime import Runtime
from tests.support.factories import SEED_PUBLISH_BODY, event_values, make_events
from tests.support.prometheus import Samples, has, parse, value
from tests.support.tokens import TENANT_A, TokenFactory, auth

PUBLISHED = "eventbus_events_published_total"
HTTP_COUNT = "eventbus_http_request_duration_seconds_count"


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def body(target_module: str = "warehouse", event_type: str = "inventory_updated") -> dict[str, Any]:
    return {**SEED_PUBLISH_BODY, "target_module": target_module, "event_type": event_type}


def test_a_burst_moves_the_counters_by_exactly_what_was_sent(
    client: TestClient, token: TokenFactory
) -> None:
    # Given the counters as they stand (other tests in this process moved them too)
    h = auth(token())
    before = scrape(client)

    # When 7 warehouse and 3 notifications events are published, and 2 bodies are refused
    for _ in range(7):
        assert client.post("/system/events", headers=h, json=body()).status_code == 201
    for _ in range(3):
        created = client.post("/system/events", headers=h, json=body("notifications", "mail"))
        assert created.status_code == 201
    for _ in range(2):
        refused = client.post("/system/events", headers=h, json={"event_type": "x"})
        assert refused.status_code == 400

    # Then the published counters moved by exactly 7 and 3, labelled by module and type only
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(PUBLISHED, target_module="warehouse", event_type="inventory_updated") == 7
    assert moved(PUBLISHED, target_module="notifications", event_type="mail") == 3
    assert moved(PUBLISHED) == 10
    assert not any("tenant_id" in dict(labels) for name, labels in after if name == PUBLISHED)
    # and request latency was observed once per request, by route template and status
    route = "/system/events"
    assert moved(HTTP_COUNT, method="POST", route=route, status="201") == 10
    assert moved(HTTP_COUNT, method="POST", route=route, status="400") == 2


def test_request_latency_is_labelled_by_template_never_by_path(
    client: TestClient, token: TokenFactory
) -> None:
    h = auth(token())
    event_id = client.post("/system/events", headers=h, json=body()).json()["event"]["id"]
    before = scrape(client)

    client.put(f"/system/events/{event_id}", headers=h, json={"status": "processed"})
    client.get("/system/events/stats", headers=h)
    client.get("/healthz")
    client.get("/no/such/path")

    after = scrape(client)

    def moved(**labels: str) -> float:
        return value(after, HTTP_COUNT, **labels) - value(before, HTTP_COUNT, **labels)

    assert moved(method="PUT", route="/system/events/{event_id}", status="200") == 1
    assert moved(method="GET", route="/system/events/stats", status="200") == 1
    assert moved(method="GET", route="/healthz", status="200") == 1
    assert moved(method="GET", route="unmatched", status="404") == 1
    assert moved(method="GET", route="/metrics", status="200") == 1  # the first scrape
    assert not any(event_id in dict(labels).get("route", "") for _, labels in after)


def test_a_publish_counts_only_once_its_transaction_commits(runtime: Runtime) -> None:
    def published() -> float:
        text = generate_latest(REGISTRY).decode()
        return value(parse(text), PUBLISHED, target_module="rolledback", event_type="t")

    writer = Principal("svc", TENANT_A, frozenset({"manage:system"}), False, "user")
    start = published()
    with runtime.unit_of_work() as uow:
        # Given a publish whose transaction rolls back: never counted
        service.publish(uow, runtime.settings, writer, None, body("rolledback", "t"))
        assert published() == start
        uow.rollback()
        assert published() == start

        # Given a publish inside a SAVEPOINT that rolls back: dropped, even once the outer commits
        with pytest.raises(LookupError), uow.savepoint():
            service.publish(uow, runtime.settings, writer, None, body("rolledback", "t"))
            raise LookupError("the savepoint's block fails")
        uow.commit()
        assert published() == start

        # Given a publish inside a SAVEPOINT that is released: counted at the outer commit only
        with uow.savepoint():
            service.publish(uow, runtime.settings, writer, None, body("rolledback", "t"))
        assert published() == start
        uow.commit()
        assert published() == start + 1


def test_backlog_gauges_are_read_at_scrape_time(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    # Given 4 warehouse events published (their messages wait: no worker runs) and an old
    # pending notifications event that was never sent
    h = auth(token())
    for _ in range(4):
        assert client.post("/system/events", headers=h, json=body()).status_code == 201
    old = datetime.now(UTC) - timedelta(minutes=5)
    make_events(runtime, [event_values(target_module="notifications", created_at=old)])

    # When Prometheus scrapes
    samples = scrape(client)

    # Then the queue depth is the Redis list's length, the age is the oldest pending event's
    assert value(samples, "eventbus_queue_depth", target_module="warehouse") == 4
    assert value(samples, "eventbus_pending_events", target_module="warehouse") == 4
    assert value(samples, "eventbus_pending_events", target_module="notifications") == 1
    assert value(samples, "eventbus_queue_depth", target_module="notifications") == 0  # unsent
    age = value(samples, "eventbus_oldest_pending_age_seconds", target_module="notifications")
    assert 300 <= age < 330
    assert value(samples, "eventbus_oldest_pending_age_seconds", target_module="warehouse") >= 0

    # and once the warehouse events are processed, the known queue reads 0 rather than vanishing
    listed = client.get("/system/events?target_module=warehouse", headers=h).json()["events"]
    for event in listed:
        client.put(f"/system/events/{event['id']}", headers=h, json={"status": "processed"})
    redis_queue = runtime.settings.queue_prefix + "warehouse"
    _drain(redis_queue)
    samples = scrape(client)
    assert has(samples, "eventbus_queue_depth", target_module="warehouse")
    assert value(samples, "eventbus_queue_depth", target_module="warehouse") == 0
    assert value(samples, "eventbus_pending_events", target_module="warehouse") == 0
    assert value(samples, "eventbus_oldest_pending_age_seconds", target_module="warehouse") == 0


def test_metrics_answer_quickly_with_the_database_down(
    database_url: str, token: TokenFactory
) -> None:
    from api.app import create_app
    from tests.support.processes import free_port
    from tests.support.services import make_settings

    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    down = Runtime(make_settings(dead))
    with TestClient(create_app(runtime=down), raise_server_exceptions=False) as client:
        started = time.monotonic()
        samples = scrape(client)
        assert time.monotonic() - started < 3
    down.close()
    assert has(samples, HTTP_COUNT)  # the counters are served
    assert not has(samples, "eventbus_pending_events")  # the backlog is left out


def _drain(queue: str) -> None:
    import redis

    from tests.support.services import REDIS_URL

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(queue)
    finally:
        client.close()
