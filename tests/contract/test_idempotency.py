"""The ``Idempotency-Key`` header of ``POST /system/events`` and ``POST /system/events/batch``:
replays, a key reused with another request, a key in flight, tenancy, malformed keys, expiry
and purge, and a retry after the API died between its commit and its answer."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event
from sqlalchemy import text

from api.app import create_app
from api.idempotency import render
from bus.auth import Principal
from bus.events.rules import utcnow
from bus.maintenance import purges
from bus.publish import idempotency, service
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import idempotency_store
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

PUBLISH = "/system/events"
BATCH = "/system/events/batch"
IN_PROGRESS = "A request with this idempotency key is in progress"
REUSED = "Idempotency key reused with a different request"
INVALID = "Invalid Idempotency-Key"


@pytest.fixture(autouse=True)
def _no_keys(runtime: Runtime) -> Iterator[None]:
    with runtime.engine.begin() as conn:
        conn.execute(text("TRUNCATE idempotency_keys"))
    yield


def keyed(tok: str, key: str) -> dict[str, str]:
    return {**auth(tok), "Idempotency-Key": key}


def events_stored(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM system_events")).scalar_one())


def keys_stored(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM idempotency_keys")).scalar_one())


def test_a_publish_sent_again_with_its_key_is_answered_the_first_response(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    # Given a publish answered 201 under a key
    first = client.post(PUBLISH, headers=keyed(token(), "order-42"), json=SEED_PUBLISH_BODY)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    # When the same request is sent again, its keys in another order and spaced differently
    same = json.dumps(dict(reversed(list(SEED_PUBLISH_BODY.items()))), indent=2)
    again = client.post(
        PUBLISH,
        headers={**keyed(token(), "order-42"), "Content-Type": "application/json"},
        content=same,
    )
    # Then it is the first response, byte for byte, marked as a replay; one event is stored
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == "application/json"
    assert first.json()["message"] == "Event published successfully"
    assert events_stored(runtime) == 1
    assert keys_stored(runtime) == 1


def test_a_batch_sent_again_with_its_key_is_answered_the_first_response(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    batch = {"events": [{**SEED_PUBLISH_BODY, "entity_id": f"item-{n}"} for n in range(3)]}
    first = client.post(BATCH, headers=keyed(token(system=True), "batch-1"), json=batch)
    again = client.post(BATCH, headers=keyed(token(system=True), "batch-1"), json=batch)

    assert first.status_code == 201, first.text
    assert first.json()["message"] == "Events published successfully"
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert events_stored(runtime) == 3


def test_publishes_without_a_key_are_never_deduplicated(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    for _ in range(2):
        response = client.post(PUBLISH, headers=auth(token()), json=SEED_PUBLISH_BODY)
        assert response.status_code == 201
        assert "idempotent-replayed" not in response.headers

    assert events_stored(runtime) == 2
    assert keys_stored(runtime) == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (PUBLISH, {**SEED_PUBLISH_BODY, "entity_id": "another-item"}),
        # the same body on the other operation is another request too
        (BATCH, {"events": [SEED_PUBLISH_BODY]}),
    ],
)
def test_a_key_reused_with_a_different_request_is_422(
    client: TestClient, token: TokenFactory, runtime: Runtime, path: str, body: dict[str, Any]
) -> None:
    first = client.post(PUBLISH, headers=keyed(token(), "k"), json=SEED_PUBLISH_BODY)
    assert first.status_code == 201

    reused = client.post(path, headers=keyed(token(), "k"), json=body)

    assert reused.status_code == 422
    assert reused.json() == {"success": False, "message": REUSED}
    assert events_stored(runtime) == 1
    # and the key still answers its own request
    again = client.post(PUBLISH, headers=keyed(token(), "k"), json=SEED_PUBLISH_BODY)
    assert again.content == first.content


def test_a_key_held_by_a_request_in_flight_is_409(
    client: TestClient, token: TokenFactory, runtime: Runtime, database_url: str
) -> None:
    # Given another transaction holding the key's lock, as a request in flight does
    lock = idempotency_store.lock_id(TENANT_A, "busy")
    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (lock,))
        # When a request with that key comes
        refused = client.post(PUBLISH, headers=keyed(token(), "busy"), json=SEED_PUBLISH_BODY)
        # Then it is refused at once, and nothing is stored
        assert refused.status_code == 409
        assert refused.json() == {"success": False, "message": IN_PROGRESS}
        assert events_stored(runtime) == 0
        assert keys_stored(runtime) == 0
        # (another tenant's same key is another lock)
        other_tenant = client.post(
            PUBLISH, headers=keyed(token(TENANT_B), "busy"), json=SEED_PUBLISH_BODY
        )
        assert other_tenant.status_code == 201
        other.execute("SELECT pg_advisory_unlock(%s)", (lock,))
    # Once the lock is gone, the retry is stored
    retried = client.post(PUBLISH, headers=keyed(token(), "busy"), json=SEED_PUBLISH_BODY)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers


def test_two_concurrent_requests_with_one_key_store_one_event(
    token: TokenFactory, runtime: Runtime
) -> None:
    # Given the first request held in flight just before it INSERTs its event
    entered, release = threading.Event(), threading.Event()

    def hold_first_insert(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("INSERT INTO system_events") and not entered.is_set():
            entered.set()
            release.wait(10)

    sa_event.listen(runtime.engine, "before_cursor_execute", hold_first_insert)
    app = create_app(runtime=runtime)
    headers = keyed(token(), "concurrent")

    async def race() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            first = asyncio.create_task(http.post(PUBLISH, headers=headers, json=SEED_PUBLISH_BODY))
            assert await asyncio.to_thread(entered.wait, 10)
            # When a second request with the key arrives meanwhile
            second = await http.post(PUBLISH, headers=headers, json=SEED_PUBLISH_BODY)
            release.set()
            answered = await first
            third = await http.post(PUBLISH, headers=headers, json=SEED_PUBLISH_BODY)
            return answered, second, third

    try:
        first, second, third = asyncio.run(race())
    finally:
        release.set()
        sa_event.remove(runtime.engine, "before_cursor_execute", hold_first_insert)
    # Then the second is 409, the first 201, a later retry the first's answer; one event
    assert second.status_code == 409
    assert second.json()["message"] == IN_PROGRESS
    assert first.status_code == 201
    assert third.content == first.content
    assert third.headers["idempotent-replayed"] == "true"
    assert events_stored(runtime) == 1


def test_keys_are_per_tenant(client: TestClient, token: TokenFactory, runtime: Runtime) -> None:
    a = client.post(PUBLISH, headers=keyed(token(TENANT_A), "shared"), json=SEED_PUBLISH_BODY)
    other_body = {**SEED_PUBLISH_BODY, "entity_id": "b-item"}
    b = client.post(PUBLISH, headers=keyed(token(TENANT_B), "shared"), json=other_body)
    # an admin naming tenant B acts in tenant B: B's key answers it
    admin = client.post(
        f"{PUBLISH}?tenant_id={TENANT_B}",
        headers=keyed(token(None, [], admin=True), "shared"),
        json=other_body,
    )

    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers
    assert b.json()["event"]["tenant_id"] == str(TENANT_B)
    assert admin.content == b.content
    assert admin.headers["idempotent-replayed"] == "true"
    assert events_stored(runtime) == 2


@pytest.mark.parametrize(
    "value",
    [b"", b"x" * 256, "cl\u00e9".encode(), b"a\tb", b"a\x7fb"],
    ids=["empty", "256 characters", "not ASCII", "tab", "DEL"],
)
def test_a_malformed_key_is_400_and_stores_nothing(
    client: TestClient, token: TokenFactory, runtime: Runtime, value: bytes
) -> None:
    for path, body in ((PUBLISH, SEED_PUBLISH_BODY), (BATCH, {"events": [SEED_PUBLISH_BODY]})):
        headers = [(b"authorization", f"Bearer {token()}".encode()), (b"idempotency-key", value)]
        response = client.post(path, headers=headers, json=body)

        assert response.status_code == 400, value
        assert response.json() == {"success": False, "message": INVALID}
    assert events_stored(runtime) == 0
    assert keys_stored(runtime) == 0


def test_two_key_headers_are_400(client: TestClient, token: TokenFactory, runtime: Runtime) -> None:
    headers = [
        ("Authorization", f"Bearer {token()}"),
        ("Idempotency-Key", "one"),
        ("Idempotency-Key", "one"),
    ]
    response = client.post(PUBLISH, headers=headers, json=SEED_PUBLISH_BODY)

    assert response.status_code == 400
    assert response.json()["message"] == INVALID
    assert events_stored(runtime) == 0


@pytest.mark.parametrize("key", ["x" * 255, "a key with spaces ~!@#$%^&*()", "7"])
def test_printable_keys_up_to_255_characters_are_taken(
    client: TestClient, token: TokenFactory, key: str
) -> None:
    first = client.post(PUBLISH, headers=keyed(token(), key), json=SEED_PUBLISH_BODY)
    again = client.post(PUBLISH, headers=keyed(token(), key), json=SEED_PUBLISH_BODY)

    assert first.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"


def test_a_request_refused_by_its_rules_stores_no_key(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    # Given a request refused with a key (400: a field missing)
    bad = {k: v for k, v in SEED_PUBLISH_BODY.items() if k != "entity_id"}
    refused = client.post(PUBLISH, headers=keyed(token(), "fixme"), json=bad)
    assert refused.json() == {"success": False, "message": "Field required entity_id"}
    # and a caller without the right (403)
    forbidden = client.post(PUBLISH, headers=keyed(token(permissions=[]), "fixme"), json=bad)
    assert forbidden.status_code == 403
    assert keys_stored(runtime) == 0
    # When the corrected request is sent with the same key, it is stored (not a 422)
    fixed = client.post(PUBLISH, headers=keyed(token(), "fixme"), json=SEED_PUBLISH_BODY)
    assert fixed.status_code == 201
    assert events_stored(runtime) == 1


def test_an_expired_key_is_a_new_request_and_is_purged(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    # Given a key whose TTL has run out
    first = client.post(PUBLISH, headers=keyed(token(), "old"), json=SEED_PUBLISH_BODY)
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
    # When it is sent again, even with another body, it is a new publish
    other = {**SEED_PUBLISH_BODY, "entity_id": "new-item"}
    again = client.post(PUBLISH, headers=keyed(token(), "old"), json=other)
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.json()["event"]["id"] != first.json()["event"]["id"]
    assert events_stored(runtime) == 2
    # and the relay's purge leaves it until its new TTL runs out
    assert purges.purge_idempotency_keys(runtime) == 0
    later = utcnow() + timedelta(seconds=runtime.settings.idempotency_ttl_seconds + 1)
    assert purges.purge_idempotency_keys(runtime, later) == 1
    assert keys_stored(runtime) == 0


def test_the_ttl_comes_from_the_setting(
    settings: Settings, runtime: Runtime, token: TokenFactory
) -> None:
    short = Runtime(settings.model_copy(update={"idempotency_ttl_seconds": 60}))
    try:
        with TestClient(create_app(runtime=short)) as client:
            client.post(PUBLISH, headers=keyed(token(), "ttl"), json=SEED_PUBLISH_BODY)
    finally:
        short.close()
    with runtime.engine.connect() as conn:
        ttl = conn.execute(text("SELECT expires_at - created_at FROM idempotency_keys")).scalar()
    assert ttl == timedelta(seconds=60)


def test_the_purge_is_bounded_and_spares_live_keys(runtime: Runtime) -> None:
    now = utcnow()
    with runtime.sessions() as session:
        for n in range(5):
            response = idempotency_store.StoredResponse("f", 201, "{}")
            ttl = timedelta(seconds=1 if n < 3 else 3600)
            idempotency_store.store(session, TENANT_A, f"k{n}", response, now, ttl)
        session.commit()
        later = now + timedelta(seconds=2)
        assert idempotency_store.purge_expired(session, later, limit=2) == 2
        assert idempotency_store.purge_expired(session, later, limit=2) == 1
        assert idempotency_store.purge_expired(session, later, limit=2) == 0
        session.commit()
    assert keys_stored(runtime) == 2


def test_a_retry_after_the_api_died_between_commit_and_answer_gets_the_one_event(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    # Given a keyed publish whose unit of work committed but whose answer never left
    # (the API died right after the commit): the service's own call, its answer dropped
    caller = Principal(
        sub="tester",
        tenant_id=TENANT_A,
        permissions=frozenset({"manage:system"}),
        is_system_admin=False,
        token_type="user",
    )
    event = service.prepare_publish(runtime.settings, caller, None, SEED_PUBLISH_BODY)
    fingerprint = idempotency.fingerprint("POST", PUBLISH, SEED_PUBLISH_BODY)
    envelope = {"success": True, "message": "Event published successfully"}
    with runtime.unit_of_work() as uow:
        lost = service.publish_once(
            uow,
            runtime.settings,
            "retry-me",
            fingerprint,
            [event],
            lambda views: render({**envelope, "event": views[0]}),
        )
        uow.commit()
    assert events_stored(runtime) == 1
    # When the client retries over HTTP with the same key
    retried = client.post(PUBLISH, headers=keyed(token(), "retry-me"), json=SEED_PUBLISH_BODY)
    # Then it is answered what the dead API would have said, and there is still one event
    assert retried.status_code == 201
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.content == lost.body
    assert retried.json()["event"]["id"] == str(event.id)
    assert events_stored(runtime) == 1


@pytest.mark.parametrize("path", [PUBLISH, BATCH])
def test_the_openapi_document_describes_the_header(client: TestClient, path: str) -> None:
    operation = client.get("/openapi.json").json()["paths"][path]["post"]
    (header,) = [p for p in operation["parameters"] if p["in"] == "header"]

    assert header["name"] == "Idempotency-Key"
    assert header["required"] is False
    assert header["schema"]["pattern"] == idempotency.KEY_PATTERN
    assert header["schema"]["maxLength"] == idempotency.MAX_KEY_LENGTH
    assert IN_PROGRESS in operation["responses"]["409"]["description"]
    assert REUSED in operation["responses"]["422"]["description"]
    assert "Idempotent-Replayed" in operation["responses"]["201"]["headers"]
    assert operation["responses"]["201"]["content"]  # the envelope is still documented


SEED_JSON = json.dumps(SEED_PUBLISH_BODY)
"""The seed's body as text: a case below adds to it what ``json.dumps`` cannot write."""


def with_field(raw_field: str) -> str:
    return SEED_JSON[:-1] + "," + raw_field + "}"


# Bodies whose raw JSON holds what a canonical encoding cannot write again: the key-less path
# answers them (201, or a 400 where the publish's rules refuse them); the keyed one was a 500.
RAW_BODIES = {
    "1e999 in an ignored field": with_field('"note":1e999'),
    "-1e999 in an ignored field": with_field('"note":[-1e999]'),
    "lone surrogate in an ignored field": with_field('"note":"\\ud800"'),
    "lone surrogate as an ignored key": with_field('"\\udfff":1'),
    "deeply nested ignored field": with_field('"note":' + "[" * 400 + "]" * 400),
    "too deep to parse": with_field('"note":' + "[" * 5000 + "]" * 5000),
    "NaN": with_field('"note":NaN'),
    "1e999 in event_data": SEED_JSON.replace('"new_quantity": 95', '"new_quantity": 1e999'),
    "lone surrogate in event_data": SEED_JSON.replace('"warehouse-uuid-1"', '"\\ud800"'),
    "lone surrogate in entity_id": SEED_JSON.replace('"item-uuid-1"', '"\\ud800"'),
}


def as_batch(raw: str) -> str:
    return '{"events":[' + raw + "]}"


def outcome(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["message"]


@pytest.mark.parametrize("path", [PUBLISH, BATCH])
@pytest.mark.parametrize("raw", list(RAW_BODIES.values()), ids=list(RAW_BODIES))
def test_a_keyed_publish_answers_what_the_key_less_one_does(
    client: TestClient, token: TokenFactory, runtime: Runtime, path: str, raw: str
) -> None:
    content = (raw if path == PUBLISH else as_batch(raw)).encode()
    plain = {**auth(token()), "Content-Type": "application/json"}
    # Given the answer without a key
    without = client.post(path, headers=plain, content=content)
    assert without.status_code in (201, 400), without.text
    # When the same body is sent with a key, then again
    first = client.post(path, headers={**plain, "Idempotency-Key": "odd-body"}, content=content)
    again = client.post(path, headers={**plain, "Idempotency-Key": "odd-body"}, content=content)
    # Then the keyed answer is the key-less one (never a 500), and a retry replays a 201
    assert outcome(first) == outcome(without), first.text
    assert first.headers["x-content-type-options"] == "nosniff"
    assert first.headers["x-request-id"]
    if first.status_code == 201:
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        assert keys_stored(runtime) == 1
    else:
        assert outcome(again) == outcome(without)
        assert keys_stored(runtime) == 0


def test_a_retry_that_changes_only_an_ignored_field_is_the_same_request(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    # The fingerprint is what the publish accepted: a field it ignores is not part of it
    first = client.post(PUBLISH, headers=keyed(token(), "ignored"), json=SEED_PUBLISH_BODY)
    again = client.post(
        PUBLISH,
        headers=keyed(token(), "ignored"),
        json={**SEED_PUBLISH_BODY, "status": "processed", "id": "anything"},
    )

    assert first.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert events_stored(runtime) == 1
