"""Heavy calls (replays, batch publishes, pages above ``EVENTBUS_HEAVY_PAGE_LIMIT``) are admitted
per tenant and in total: one more is ``429 Too many concurrent requests`` in the envelope with
``Retry-After``; other tenants and light calls are not counted against them (``api/limits.py``).

Calls are held in flight by entering the app's own admission in its event loop (the test
client's portal), so each test knows exactly what is in flight when it asks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import anyio
import pytest
from anyio import CapacityLimiter
from fastapi.testclient import TestClient

from api.app import create_app
from api.limits import HeavyCalls
from bus.auth import Principal
from bus.runtime import Runtime
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.services import make_settings
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

TENANT_C = uuid.UUID("cccccccc-cccc-4ccc-8ccc-cccccccccccc")
TOO_MANY = {"success": False, "message": "Too many concurrent requests"}
BIG_PAGE = ("GET", "/system/events", {"params": {"limit": "101"}})
HEAVY_CALLS = {
    "big page": BIG_PAGE,
    "replay": ("POST", "/system/events/replay", {"json": {"max": 10}}),
    "batch": ("POST", "/system/events/batch", {"json": {"events": [SEED_PUBLISH_BODY]}}),
}


def caller(tenant: uuid.UUID) -> Principal:
    return Principal("tester", tenant, frozenset({"manage:system"}), False, "user")


@contextmanager
def client_with(runtime: Runtime, **settings: Any) -> Iterator[TestClient]:
    """A client of an app over ``bus``'s database and queues, with these settings changed."""
    changed = Runtime(runtime.settings.model_copy(update=settings))
    try:
        with TestClient(create_app(runtime=changed), raise_server_exceptions=False) as client:
            yield client
    finally:
        changed.close()


@pytest.fixture
def limited(runtime: Runtime) -> Iterator[TestClient]:
    with client_with(
        runtime, heavy_calls_per_tenant=2, heavy_calls_total=3, heavy_batch_bytes=0
    ) as client:
        yield client


@contextmanager
def in_flight(client: TestClient, *tenants: uuid.UUID) -> Iterator[None]:
    """One heavy call of each of ``tenants`` held in flight in the app's loop for the block."""
    heavy: HeavyCalls = client.app.state.heavy_calls  # type: ignore[attr-defined]
    assert client.portal is not None
    held: list[AbstractAsyncContextManager[Any]] = []
    for tenant in tenants:
        admission = heavy.admitted(caller(tenant))
        client.portal.call(admission.__aenter__)
        held.append(admission)
    try:
        yield
    finally:
        for admission in reversed(held):
            client.portal.call(admission.__aexit__, None, None, None)


def call(client: TestClient, token: str, name: str) -> Any:
    method, path, kwargs = HEAVY_CALLS[name]
    return client.request(method, path, headers=auth(token), **kwargs)


@pytest.mark.parametrize("name", HEAVY_CALLS)
def test_a_tenants_heavy_call_beyond_its_cap_is_429_with_retry_after(
    limited: TestClient, token: TokenFactory, name: str
) -> None:
    # Given two heavy calls of tenant A in flight (its cap)
    with in_flight(limited, TENANT_A, TENANT_A):
        # When A makes a third: refused at once, in the envelope, told when to retry
        refused = call(limited, token(TENANT_A), name)
        assert refused.status_code == 429
        assert refused.json() == TOO_MANY
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["X-Content-Type-Options"] == "nosniff"
        # while tenant B's same call is served
        assert call(limited, token(TENANT_B), name).status_code in (200, 201)
    # Then, A's calls done, A is served again
    assert call(limited, token(TENANT_A), name).status_code in (200, 201)


def test_light_calls_are_not_counted(limited: TestClient, token: TokenFactory) -> None:
    with in_flight(limited, TENANT_A, TENANT_A):
        a = auth(token(TENANT_A))
        assert limited.get("/system/events", params={"limit": "100"}, headers=a).status_code == 200
        assert limited.get("/system/events", headers=a).status_code == 200
        assert limited.post("/system/events", json=SEED_PUBLISH_BODY, headers=a).status_code == 201
        assert limited.get("/system/events/stats", headers=a).status_code == 200
        assert limited.get("/healthz").status_code == 200


def test_a_batch_is_heavy_only_above_its_byte_bound(runtime: Runtime, token: TokenFactory) -> None:
    # Given a tenant at its cap of heavy calls, and batches heavy above 4,000 bytes
    with (
        client_with(runtime, heavy_calls_per_tenant=2, heavy_batch_bytes=4_000) as client,
        in_flight(client, TENANT_A, TENANT_A),
    ):
        a = auth(token(TENANT_A))
        # When it publishes a small batch: served as a publish is
        small = client.post("/system/events/batch", headers=a, json={"events": [SEED_PUBLISH_BODY]})
        assert small.status_code == 201, small.text
        # and a big one: a heavy call, refused at the cap
        big = {"events": [SEED_PUBLISH_BODY] * 40}
        refused = client.post("/system/events/batch", headers=a, json=big)
        assert (refused.status_code, refused.json()) == (429, TOO_MANY)


def test_the_process_total_caps_every_tenant(limited: TestClient, token: TokenFactory) -> None:
    # Given three heavy calls in flight in all (the total), of two tenants
    with in_flight(limited, TENANT_A, TENANT_A, TENANT_B):
        # Then a third tenant, with none of its own, is refused too
        method, path, kwargs = BIG_PAGE
        refused = limited.request(method, path, headers=auth(token(TENANT_C)), **kwargs)
        assert refused.status_code == 429
        assert refused.json() == TOO_MANY


def test_an_admin_without_a_tenant_has_a_budget_of_its_own(
    limited: TestClient, token: TokenFactory
) -> None:
    with in_flight(limited, TENANT_A, TENANT_A):
        admin = auth(token(None, admin=True))
        response = limited.get("/system/events", params={"limit": "1000"}, headers=admin)
        assert response.status_code == 200


def test_auth_is_checked_before_the_cap(limited: TestClient, token: TokenFactory) -> None:
    with in_flight(limited, TENANT_A, TENANT_A):
        assert limited.get("/system/events", params={"limit": "1000"}).status_code == 401
        reader_only = auth(token(TENANT_A, permissions=[]))
        response = limited.post("/system/events/replay", json={}, headers=reader_only)
        assert response.status_code == 403


def test_a_batch_body_beyond_its_json_value_bound_is_413(
    runtime: Runtime, token: TokenFactory
) -> None:
    # Given a bound of 200 keys and values in a batch body
    item = {**SEED_PUBLISH_BODY, "event_data": {f"k{n}": n for n in range(40)}}
    with client_with(runtime, max_batch_json_values=200) as client:
        a = auth(token(TENANT_A))
        # When a batch holds 2 items of 93 keys and values each (189 in all): accepted
        ok = client.post("/system/events/batch", headers=a, json={"events": [item, item]})
        assert ok.status_code == 201, ok.text
        # When it holds 3: refused before it is parsed
        refused = client.post("/system/events/batch", headers=a, json={"events": [item] * 3})
        assert refused.status_code == 413
        assert refused.json() == {"success": False, "message": "Request body too large"}
        # Long strings are not counted; the separators inside them are (a bound from above)
        long_text = {**SEED_PUBLISH_BODY, "event_data": {"text": "x" * 100_000}}
        text = client.post("/system/events/batch", headers=a, json={"events": [long_text] * 9})
        assert text.status_code == 201, text.text
        separators = {**SEED_PUBLISH_BODY, "event_data": {"text": ",:" * 100}}
        counted = client.post("/system/events/batch", headers=a, json={"events": [separators]})
        assert counted.status_code == 413
        # And invalid JSON is still the seed's 400
        bad = client.post("/system/events/batch", headers={**a, "content-type": "application/json"},
                          content=b'{"events": [')  # fmt: skip
        assert bad.status_code == 400
        assert bad.json()["message"] == "Invalid JSON body"


def test_heavy_threads_are_per_event_loop() -> None:
    """An app run by one test client after another (each its own loop) gets a limiter of the
    running loop each time, never one whose waiters belong to a loop that is gone."""
    heavy = HeavyCalls(make_settings("sqlite://", heavy_threads=3))

    async def limiter_now() -> CapacityLimiter:
        async with heavy.admitted(caller(TENANT_A)) as limiter:
            return limiter

    first, second = anyio.run(limiter_now), anyio.run(limiter_now)
    assert first is not second
    assert first.total_tokens == second.total_tokens == 3
    assert heavy.in_flight == 0
