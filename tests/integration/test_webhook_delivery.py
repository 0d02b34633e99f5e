"""Webhook delivery end to end: a real ``eventbus worker`` sends a module's events to real HTTP
receivers on 127.0.0.1 (:mod:`tests.support.receiver`); signatures are checked with the
outside ``standardwebhooks`` package."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from bus.maintenance import retention
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import delivery_store
from bus.storage.delivery_store import DeliveryRow
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import wait_for
from tests.support.receiver import Receiver
from tests.support.tokens import TENANT_A, TENANT_B, auth, make_token
from tests.support.workers import WORKER_SETTINGS, WorkerFactory, load, wait_for_status

MODULE = "storefront"
"""A module no test handler takes: only endpoints consume it."""

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        **WORKER_SETTINGS,
        "webhook_allow_networks": "127.0.0.1/32",
        "webhook_retry_schedule": "0.3,0.3,0.3,0.3",
        "webhook_timeout_seconds": 3.0,
        "worker_poll_seconds": 0.5,
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _h(tenant: uuid.UUID = TENANT_A) -> dict[str, str]:
    return auth(make_token(tenant=tenant))


def endpoint(
    client: TestClient, url: str, tenant: uuid.UUID = TENANT_A, **body: Any
) -> dict[str, Any]:
    answer = client.post(
        "/system/endpoints", headers=_h(tenant), json={"target_module": MODULE, "url": url, **body}
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()["endpoint"]
    return created


def publish(
    client: TestClient, tenant: uuid.UUID = TENANT_A, entity: str = "sku-1", **data: Any
) -> str:
    body = {**SEED_PUBLISH_BODY, "target_module": MODULE, "entity_id": entity, "event_data": data}
    answer = client.post("/system/events", headers=_h(tenant), json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["event"]["id"])


def ids_received(receiver: Receiver, path: str) -> list[str]:
    return [r["headers"]["webhook-id"] for r in receiver.received(path)]


def test_events_reach_their_endpoint_signed_and_once(
    client: TestClient, receiver: Receiver, start_worker: WorkerFactory, runtime: Runtime
) -> None:
    made = endpoint(client, receiver.url + "/hook")
    start_worker(MODULE)
    events = [publish(client, n=n) for n in range(30)]
    for event_id in events:
        wait_for_status(runtime, event_id, "processed", 30)
    got = receiver.received("/hook")
    assert sorted(ids_received(receiver, "/hook")) == sorted(events)
    verifier = Webhook(made["secret"])
    for record in got:
        body = receiver.body(record)
        verifier.verify(body, record["headers"])  # raises if the signature is wrong
        assert json.loads(body)["id"] == record["headers"]["webhook-id"]
    detail = client.get(f"/system/events/{events[0]}", headers=_h()).json()
    assert detail["deliveries"] == [
        {
            "event_id": events[0],
            "endpoint_id": made["id"],
            "status": "acknowledged",
            "requests": 1,
            "last_status_code": 204,
            "last_error": None,
            "last_attempt_at": detail["deliveries"][0]["last_attempt_at"],
            "acknowledged_at": detail["deliveries"][0]["acknowledged_at"],
        }
    ]
    # Keep-alive: a few connections carried the 30 requests.
    assert receiver.stats()["connections"] < 30


def test_a_failure_is_retried_only_where_it_failed(
    client: TestClient, start_worker: WorkerFactory, runtime: Runtime
) -> None:
    with Receiver(script={"/bad": {"status": 500, "body": "down for a bit"}}) as receiver:
        endpoint(client, receiver.url + "/good")
        bad = endpoint(client, receiver.url + "/bad")
        start_worker(MODULE)
        event_id = publish(client)
        wait_for(lambda: len(receiver.received("/bad")) >= 2, 20, "no retry reached /bad")
        receiver.set("/bad")  # answers 204 from now on
        row = wait_for_status(runtime, event_id, "processed", 20)
        assert row.retry_count >= 2
        assert ids_received(receiver, "/good") == [event_id]  # acknowledged: never sent again
        detail = client.get(f"/system/events/{event_id}", headers=_h()).json()
        failures = [a for a in detail["attempts"] if a["outcome"] == "failed"]
        assert (
            failures
            and f"endpoint {bad['id']}: HTTP 500: down for a bit" in (failures[0]["error_message"])
        )
        by_endpoint = {d["endpoint_id"]: d for d in detail["deliveries"]}
        assert by_endpoint[bad["id"]]["requests"] == len(receiver.received("/bad"))
        assert by_endpoint[bad["id"]]["status"] == "acknowledged"


def test_retry_after_of_a_429_is_honoured(
    client: TestClient, receiver: Receiver, start_worker: WorkerFactory, runtime: Runtime
) -> None:
    receiver.set("/busy", status=429, retry_after="3")
    endpoint(client, receiver.url + "/busy")
    start_worker(MODULE)
    event_id = publish(client)
    wait_for(lambda: len(receiver.received("/busy")) >= 1, 20, "nothing reached /busy")
    receiver.set("/busy")
    wait_for_status(runtime, event_id, "processed", 20)
    first, second = receiver.received("/busy")[:2]
    # The schedule says 0.3 s; the receiver asked for 3 s.
    assert second["time"] - first["time"] >= 2.9


def test_410_disables_the_endpoint_its_events_wait_and_enabling_resumes_them(
    client: TestClient, receiver: Receiver, start_worker: WorkerFactory, runtime: Runtime
) -> None:
    receiver.set("/gone", status=410)
    made = endpoint(client, receiver.url + "/gone")
    start_worker(MODULE)
    first = publish(client)
    wait_for(
        lambda: (
            not client.get(f"/system/endpoints/{made['id']}", headers=_h()).json()["endpoint"][
                "enabled"
            ]
        ),
        20,
        "a 410 did not disable the endpoint",
    )
    shown = client.get(f"/system/endpoints/{made['id']}", headers=_h()).json()["endpoint"]
    assert shown["disabled_reason"].startswith("410 Gone")
    later = publish(client, entity="sku-2")
    for event_id in (first, later):
        wait_for(
            lambda e=event_id: load(runtime, e).error_message == "Waiting for a disabled endpoint",
            20,
            "the event does not wait",
        )
    waiting_count = load(runtime, later).retry_count
    assert waiting_count == 0  # waiting spends no attempt
    sent_before = len(receiver.received("/gone"))
    time.sleep(1.5)
    assert len(receiver.received("/gone")) == sent_before  # nothing goes to a disabled endpoint
    waiting = client.get(
        f"/system/endpoints/{made['id']}/deliveries?status=waiting", headers=_h()
    ).json()["deliveries"]
    assert {d["event_id"] for d in waiting} == {first, later}
    receiver.set("/gone")
    answer = client.put(f"/system/endpoints/{made['id']}", headers=_h(), json={"enabled": True})
    assert answer.status_code == 200, answer.text
    for event_id in (first, later):
        wait_for_status(runtime, event_id, "processed", 20)


def test_an_endpoint_failing_for_the_set_time_is_disabled(
    client: TestClient,
    receiver: Receiver,
    start_worker: WorkerFactory,
    settings: Settings,
    runtime: Runtime,
) -> None:
    receiver.set("/down", status=503)
    made = endpoint(client, receiver.url + "/down")
    worker_settings = settings.model_copy(
        update={"webhook_disable_after_seconds": 1.0, "webhook_retry_schedule": "0.3," * 30 + "0.3"}
    )
    start_worker(MODULE, worker_settings=worker_settings)
    event_id = publish(client)

    def disabled() -> bool:
        found = client.get(f"/system/endpoints/{made['id']}", headers=_h()).json()["endpoint"]
        return not found["enabled"]

    wait_for(disabled, 20, "the failing endpoint was never disabled")
    found = client.get(f"/system/endpoints/{made['id']}", headers=_h()).json()["endpoint"]
    assert found["failing_since"] is not None
    assert "every delivery failed" in found["disabled_reason"]
    wait_for(
        lambda: load(runtime, event_id).error_message == "Waiting for a disabled endpoint",
        20,
        "the event does not wait for its endpoint",
    )
    receiver.set("/down")
    client.put(f"/system/endpoints/{made['id']}", headers=_h(), json={"enabled": True})
    wait_for_status(runtime, event_id, "processed", 20)
    found = client.get(f"/system/endpoints/{made['id']}", headers=_h()).json()["endpoint"]
    assert found["failing_since"] is None


def test_a_tenant_endpoint_gets_only_its_tenant_events(
    client: TestClient, receiver: Receiver, start_worker: WorkerFactory, runtime: Runtime
) -> None:
    endpoint(client, receiver.url + "/a", TENANT_A)
    endpoint(client, receiver.url + "/b", TENANT_B)
    start_worker(MODULE)
    mine = [publish(client, TENANT_A, n=n) for n in range(5)]
    theirs = [publish(client, TENANT_B, n=n) for n in range(5)]
    for event_id in mine + theirs:
        wait_for_status(runtime, event_id, "processed", 30)
    assert sorted(ids_received(receiver, "/a")) == sorted(mine)
    assert sorted(ids_received(receiver, "/b")) == sorted(theirs)


def test_a_slow_endpoint_does_not_slow_the_others(
    client: TestClient,
    receiver: Receiver,
    start_worker: WorkerFactory,
    settings: Settings,
    runtime: Runtime,
) -> None:
    receiver.set("/slow", delay=2)
    endpoint(client, receiver.url + "/slow", TENANT_B)
    endpoint(client, receiver.url + "/fast", TENANT_A)
    # One process with room for 16 requests, 8 of them for one tenant: the slow tenant's 40
    # events would fill it (and hold every claim) without the tenant's share.
    patient = settings.model_copy(
        update={
            "webhook_timeout_seconds": 15.0,
            "webhook_concurrency": 16,
            "webhook_tenant_concurrency": 8,
        }
    )
    start_worker(MODULE, concurrency=1, worker_settings=patient)
    slow = [publish(client, TENANT_B, entity=f"s{n}") for n in range(40)]
    wait_for(lambda: len(receiver.received("/slow")) >= 8, 10, "the slow endpoint got nothing")
    began = time.monotonic()
    fast = [publish(client, TENANT_A, entity=f"f{n}") for n in range(30)]
    for event_id in fast:
        wait_for_status(runtime, event_id, "processed", 10)
    took = time.monotonic() - began
    assert took < 3.0, f"the fast endpoint's events took {took:.1f} s behind a 2 s endpoint"
    assert load(runtime, slow[-1]).status == "pending"  # still on its way
    # The slow tenant had at most its share in flight, and all its events arrive, once each.
    for event_id in slow:
        row = wait_for_status(runtime, event_id, "processed", 30)
        assert row.retry_count == 0
    assert sorted(ids_received(receiver, "/slow")) == sorted(slow)


def test_an_ordered_failing_endpoint_holds_only_its_own_keys(
    client: TestClient, receiver: Receiver, start_worker: WorkerFactory, runtime: Runtime
) -> None:
    receiver.set("/ordered", status=500)
    endpoint(client, receiver.url + "/ordered", TENANT_A, ordered=True)
    endpoint(client, receiver.url + "/other", TENANT_B)
    start_worker(MODULE)
    held = [publish(client, TENANT_A, entity="x", n=n) for n in range(3)]
    wait_for(lambda: len(receiver.received("/ordered")) >= 2, 20, "no retry of x's first event")
    others = [publish(client, TENANT_B, entity="x", n=n) for n in range(3)]
    for event_id in others:
        wait_for_status(runtime, event_id, "processed", 20)
    # x's later events never went out while its first one fails.
    assert set(ids_received(receiver, "/ordered")) == {held[0]}
    receiver.set("/ordered")
    for event_id in held:
        wait_for_status(runtime, event_id, "processed", 20)
    assert ids_received(receiver, "/ordered")[-3:] == held  # in commit order


def test_a_rotation_signs_with_both_secrets(
    client: TestClient, receiver: Receiver, start_worker: WorkerFactory, runtime: Runtime
) -> None:
    made = endpoint(client, receiver.url + "/hook")
    rotated = client.post(f"/system/endpoints/{made['id']}/rotate-secret", headers=_h()).json()
    start_worker(MODULE)
    event_id = publish(client)
    wait_for_status(runtime, event_id, "processed", 20)
    (record,) = receiver.received("/hook")
    body = receiver.body(record)
    assert len(record["headers"]["webhook-signature"].split()) == 2
    Webhook(made["secret"]).verify(body, record["headers"])
    Webhook(rotated["endpoint"]["secret"]).verify(body, record["headers"])


def test_a_redirect_is_not_followed(
    client: TestClient, receiver: Receiver, start_worker: WorkerFactory, runtime: Runtime
) -> None:
    with Receiver() as inside:
        receiver.set("/moved", status=302, location=inside.url + "/inside")
        endpoint(client, receiver.url + "/moved")
        start_worker(MODULE)
        event_id = publish(client)
        wait_for(lambda: len(receiver.received("/moved")) >= 2, 20, "no retry")
        assert inside.received() == []
        assert "HTTP 302" in (load(runtime, event_id).error_message or "")


def test_retention_purges_the_deliveries_of_finished_events_only(
    client: TestClient, runtime: Runtime
) -> None:
    in_flight = uuid.UUID(publish(client))  # pending: in the in-flight set
    finished = uuid.uuid4()  # gone from the in-flight set (its day dropped, say)
    old = datetime(2020, 1, 1, tzinfo=UTC)
    with runtime.sessions.begin() as session:
        delivery_store.save(
            session,
            [
                DeliveryRow(
                    event, uuid.uuid4(), TENANT_A, old, "acknowledged", 1, 204, None, old, old
                )
                for event in (in_flight, finished)
            ],
        )
    assert retention.purge_deliveries(runtime) == 1
    with runtime.sessions() as session:
        assert delivery_store.of_event(session, finished, None) == []
        assert len(delivery_store.of_event(session, in_flight, None)) == 1


def test_the_address_is_checked_again_when_the_worker_connects(
    client: TestClient,
    receiver: Receiver,
    start_worker: WorkerFactory,
    settings: Settings,
    runtime: Runtime,
) -> None:
    # Given an endpoint the API allowed (127.0.0.1 on its allow-list), and a worker whose
    # policy does not allow it (as a name rebound to 127.0.0.1 after the create would be)
    endpoint(client, receiver.url + "/hook")
    strict = settings.model_copy(update={"webhook_allow_networks": ""})
    start_worker(MODULE, worker_settings=strict)
    event_id = publish(client)
    # Then nothing reaches the receiver, and the event says why
    wait_for(
        lambda: "URL not allowed" in (load(runtime, event_id).error_message or ""),
        20,
        "the delivery was not refused",
    )
    assert receiver.stats()["connections"] == 0
    assert receiver.received() == []


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_stopping_worker_finishes_its_requests_first(
    client: TestClient,
    receiver: Receiver,
    start_worker: WorkerFactory,
    runtime: Runtime,
    pool: str,
) -> None:
    # Given requests under way to a receiver that answers after 2 s
    receiver.set("/slow", delay=2)
    endpoint(client, receiver.url + "/slow")
    worker = start_worker(MODULE, pool=pool, concurrency=1)
    events = [publish(client, entity=f"e{n}") for n in range(10)]
    wait_for(lambda: len(receiver.received("/slow")) >= 10, 10, "the requests did not start")
    # When the worker is told to stop (SIGTERM) while they wait for their answers
    assert worker.stop(timeout=40) == 0
    # Then their outcomes were written before it exited: a new worker sends nothing again
    assert all(load(runtime, e).status == "processed" for e in events)
    start_worker(MODULE, pool=pool, concurrency=1)
    time.sleep(1.0)
    assert sorted(ids_received(receiver, "/slow")) == sorted(events)


def test_a_handler_and_an_endpoint_take_the_same_event(
    client: TestClient, receiver: Receiver, start_worker: WorkerFactory, runtime: Runtime
) -> None:
    # Given a module with a Python handler (which fails its first attempt) and an endpoint
    client.post(
        "/system/endpoints",
        headers=_h(),
        json={"target_module": "warehouse", "url": receiver.url + "/hook"},
    ).raise_for_status()
    start_worker("warehouse")
    body = {**SEED_PUBLISH_BODY, "target_module": "warehouse", "event_data": {"fail_until": 1}}
    answer = client.post("/system/events", headers=_h(), json=body)
    event_id = answer.json()["event"]["id"]
    # Then the event is processed after its handler's retry, and its endpoint, which
    # acknowledged the first attempt, got it once
    row = wait_for_status(runtime, event_id, "processed", 20)
    assert row.retry_count == 1
    assert ids_received(receiver, "/hook") == [event_id]
    detail = client.get(f"/system/events/{event_id}", headers=_h()).json()
    assert [(d["status"], d["requests"]) for d in detail["deliveries"]] == [("acknowledged", 1)]
