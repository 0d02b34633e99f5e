"""`eventbus.client` against a live `eventbus api` subprocess on PostgreSQL: publish,
publish_many, a walk of 250 events, update_status, the seed's errors as typed exceptions, and
a retry after a dropped connection that reuses its Idempotency-Key.

Calls whose server side is being built beside the client (`GET /system/events/{id}`, the
cursor, replay) are checked against a stub transport for what the client sends and reads.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bus.runtime import Runtime
from bus.storage.models import SystemEvent
from eventbus.client import (
    AsyncClient,
    AuthError,
    Client,
    EventBusError,
    InvalidRequest,
    NotFound,
    Retry,
    ServerError,
)
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TENANT_A, TokenFactory

pytestmark = pytest.mark.integration

FAST = Retry(attempts=4, base=0.01, cap=0.05)


def stored(runtime: Runtime, **where: Any) -> int:
    with runtime.sessions() as session:
        stmt = select(func.count()).select_from(SystemEvent)
        for name, value in where.items():
            stmt = stmt.where(getattr(SystemEvent, name) == value)
        return int(session.execute(stmt).scalar_one())


def test_publish_update_and_publish_many(api: str, token: TokenFactory) -> None:
    with Client(api, token(system=True), retry=FAST) as client:
        event = client.publish(**SEED_PUBLISH_BODY)
        assert event["status"] == "pending"
        assert event["tenant_id"] == str(TENANT_A)
        assert event["event_data"] == SEED_PUBLISH_BODY["event_data"]

        updated = client.update_status(
            event["id"], "processed", processed_at="2023-04-01T15:05:00Z"
        )
        assert updated["status"] == "processed"
        assert updated["processed_at"] == "2023-04-01T15:05:00Z"

        failed = client.update_status(event["id"], "failed", error_message="boom")
        assert (failed["status"], failed["retry_count"], failed["error_message"]) == (
            "failed",
            1,
            "boom",
        )

        items = [{**SEED_PUBLISH_BODY, "entity_id": f"item-{i}"} for i in range(3)]
        many = client.publish_many(items)
        assert [e["entity_id"] for e in many] == ["item-0", "item-1", "item-2"]


def test_get_reads_one_event_live(api: str, token: TokenFactory) -> None:
    with Client(api, token(system=True), retry=FAST) as client:
        event = client.publish(**SEED_PUBLISH_BODY)
        client.update_status(event["id"], "failed", error_message="boom")
        detail = client.get(event["id"])
        assert detail["event"]["id"] == event["id"]
        assert detail["event"]["status"] == "failed"
        assert isinstance(detail["attempts"], list)
        with pytest.raises(NotFound) as missing:
            client.get(uuid.uuid4())
        assert missing.value.message == "Event not found"


def test_events_walks_every_page(api: str, runtime: Runtime, token: TokenFactory) -> None:
    # Given 250 events (and 5 another module's, filtered out)
    with Client(api, token(system=True), retry=FAST) as client:
        published = []
        for start in (0, 100, 200):
            items = [
                {**SEED_PUBLISH_BODY, "entity_id": f"item-{i}"}
                for i in range(start, min(start + 100, 250))
            ]
            published += [e["id"] for e in client.publish_many(items)]
        client.publish_many([{**SEED_PUBLISH_BODY, "target_module": "other"}] * 5)

        # When the client walks them 100 at a time
        walked = [e["id"] for e in client.events(target_module="warehouse", page_size=100)]

    # Then each comes exactly once
    assert len(walked) == 250
    assert set(walked) == set(published)


def test_errors_carry_the_seeds_status_and_message(api: str, token: TokenFactory) -> None:
    with Client(api, token(system=True), retry=FAST) as client:
        with pytest.raises(InvalidRequest) as bad:
            client.publish(**{**SEED_PUBLISH_BODY, "entity_id": ""})
        assert (bad.value.status, bad.value.message) == (400, "Field required entity_id")

        with pytest.raises(InvalidRequest) as not_object:
            client.publish(**{**SEED_PUBLISH_BODY, "event_data": []})  # type: ignore[arg-type]
        assert not_object.value.message == "Event data must be object"

        with pytest.raises(NotFound) as missing:
            client.update_status(str(uuid.uuid4()), "processed")
        assert (missing.value.status, missing.value.message) == (404, "Event not found")

        with pytest.raises(InvalidRequest) as status:
            client.update_status(str(uuid.uuid4()), "done")
        assert status.value.message == "Invalid status"

    with Client(api, token(permissions=[]), retry=FAST) as reader:
        with pytest.raises(AuthError) as forbidden:
            next(iter(reader.events()))
        assert (forbidden.value.status, forbidden.value.message) == (
            403,
            "Insufficient permissions",
        )

    with Client(api, "not-a-token", retry=FAST) as stranger, pytest.raises(AuthError) as denied:
        next(iter(stranger.events()))
    assert denied.value.status == 401


class DropsFirstAnswer(httpx.BaseTransport):
    """Sends each request to the server; the first answer is read, then lost (the connection
    "drops" after the server stored the event)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.keys: list[str | None] = []
        self.answers: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers.get("Idempotency-Key"))
        response = self.inner.handle_request(request)
        response.read()
        self.answers.append(response)
        if len(self.keys) == 1:
            raise httpx.ReadError("connection dropped", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_retry_after_a_dropped_connection_reuses_its_key(
    api: str, runtime: Runtime, token: TokenFactory
) -> None:
    # Given a connection that drops after the server answered the first try
    transport = DropsFirstAnswer()
    entity = f"item-{uuid.uuid4()}"
    with Client(api, token(system=True), retry=FAST, transport=transport) as client:
        # When the client publishes
        event = client.publish(**{**SEED_PUBLISH_BODY, "entity_id": entity})

    # Then it tried twice with one key, and got an event back
    assert len(transport.keys) == 2
    assert transport.keys[0] is not None
    assert transport.keys[0] == transport.keys[1]
    assert event["entity_id"] == entity
    if transport.answers[1].headers.get("Idempotent-Replayed") == "true":
        # The server honours the key: the first event only.
        assert stored(runtime, entity_id=entity) == 1
        assert event["id"] == transport.answers[0].json()["event"]["id"]
    else:
        # Without the server side of the key both tries are stored; the key is what fixes it.
        assert stored(runtime, entity_id=entity) == 2


def test_async_client(api: str, token: TokenFactory) -> None:
    async def scenario() -> list[str]:
        async with AsyncClient(api, token(system=True), retry=FAST) as client:
            event = await client.publish(**SEED_PUBLISH_BODY)
            await client.publish_many([SEED_PUBLISH_BODY] * 2)
            with pytest.raises(NotFound):
                await client.update_status(str(uuid.uuid4()), "processed")
            updated = await client.update_status(event["id"], "processed")
            assert updated["status"] == "processed"
            return [e["id"] async for e in client.events(page_size=2)]

    walked = asyncio.run(scenario())
    assert len(walked) == len(set(walked)) == 3


# --- against a stub transport: what the client sends and how it reads -------------------


def _answer(status: int, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)


def test_retries_502_503_504_with_one_key_then_gives_up() -> None:
    seen: list[httpx.Request] = []
    event = {**SEED_PUBLISH_BODY, "id": str(uuid.uuid4()), "status": "pending"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= 3:
            return _answer(502 + len(seen) - 1, {"success": False, "message": "Bad gateway"})
        return _answer(201, {"success": True, "message": "Event published successfully",
                             "event": event})  # fmt: skip

    with Client("http://bus", "t", retry=FAST, transport=httpx.MockTransport(handler)) as client:
        assert client.publish(**SEED_PUBLISH_BODY)["id"] == event["id"]
    assert len({r.headers["Idempotency-Key"] for r in seen}) == 1
    assert len(seen) == 4

    # Retries are bounded: always 503 ends in ServerError after the attempts
    seen.clear()
    always = httpx.MockTransport(
        lambda r: seen.append(r) or _answer(503, {"success": False, "message": "Not ready"})
    )
    with Client("http://bus", "t", retry=FAST, transport=always) as client:
        with pytest.raises(ServerError) as exc:
            client.publish(**SEED_PUBLISH_BODY)
        assert (exc.value.status, exc.value.message) == (503, "Not ready")
        assert len(seen) == FAST.attempts
        # a PUT is not resent after an answer the server may have acted on
        seen.clear()
        with pytest.raises(ServerError):
            client.update_status(str(uuid.uuid4()), "failed")
        assert len(seen) == 1

    # a second logical call gets a key of its own
    calls: list[str] = []

    def ok(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["Idempotency-Key"])
        return _answer(201, {"success": True, "message": "Event published successfully",
                             "event": event})  # fmt: skip

    with Client("http://bus", "t", transport=httpx.MockTransport(ok)) as client:
        client.publish(**SEED_PUBLISH_BODY)
        client.publish(**SEED_PUBLISH_BODY)
    assert calls[0] != calls[1]


def test_get_reads_the_event_and_its_attempts() -> None:
    event_id = str(uuid.uuid4())
    body = {
        "success": True,
        "message": "Event retrieved successfully",
        "event": {**SEED_PUBLISH_BODY, "id": event_id, "status": "failed"},
        "attempts": [{"attempt": 1, "outcome": "failed", "error_message": "boom"}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/system/events/{event_id}":
            return _answer(200, body)
        return _answer(404, {"success": False, "message": "Event not found"})

    with Client("http://bus", "t", transport=httpx.MockTransport(handler)) as client:
        detail = client.get(event_id, tenant_id=TENANT_A)
        assert detail["event"]["id"] == event_id
        assert detail["attempts"][0]["outcome"] == "failed"
        with pytest.raises(NotFound) as exc:
            client.get("nope")
        assert exc.value.message == "Event not found"


def test_events_follows_next_cursor_without_page() -> None:
    pages = {None: (["a", "b"], "c1"), "c1": (["c", "d"], "c2"), "c2": (["e"], None)}
    asked: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        ids, following = pages[params.get("cursor")]
        return _answer(200, {
            "success": True, "message": "Events retrieved successfully",
            "events": [{"id": i} for i in ids], "page": 1, "limit": 2, "total": 5,
            "next_cursor": following,
        })  # fmt: skip

    with Client("http://bus", "t", transport=httpx.MockTransport(handler)) as client:
        walked = [e["id"] for e in client.events(status="failed", page_size=2)]
    assert walked == ["a", "b", "c", "d", "e"]
    assert all("page" not in p and p["status"] == "failed" for p in asked)
    assert [p.get("cursor") for p in asked] == [None, "c1", "c2"]


def test_replay_sends_filters_dry_run_and_max() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return _answer(200, {"success": True, "message": "Replay preview",
                             "matched": 7, "replayed": 0})  # fmt: skip

    with Client("http://bus", "t", transport=httpx.MockTransport(handler)) as client:
        result = client.replay(
            status="failed", target_module="warehouse", dry_run=True, max_events=50,
            created_after="2023-04-01T00:00:00Z",
        )  # fmt: skip
    assert result == {"matched": 7, "replayed": 0}
    assert sent[0].url.path == "/system/events/replay"
    assert json.loads(sent[0].content) == {
        "status": "failed",
        "target_module": "warehouse",
        "created_after": "2023-04-01T00:00:00Z",
        "dry_run": True,
        "max": 50,
    }
    assert sent[0].headers["Idempotency-Key"]


def test_unreachable_server_is_a_server_error_without_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    transport = httpx.MockTransport(refuse)
    with (
        Client("http://bus", "t", retry=FAST, transport=transport) as client,
        pytest.raises(ServerError) as exc,
    ):
        client.publish(**SEED_PUBLISH_BODY)
    assert exc.value.status is None
    assert isinstance(exc.value, EventBusError)
