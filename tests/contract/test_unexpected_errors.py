"""An error no handler takes (a bug, a database fault) is a 500 in the envelope that carries
every header the other answers carry: ``X-Request-ID``, ``nosniff``, ``no-store``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app
from bus.runtime import Runtime
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TokenFactory, auth

INTERNAL = {"success": False, "message": "Internal server error"}
REQUEST_ID = "trace-me-0001"


def assert_internal_error(response: httpx.Response) -> None:
    assert response.status_code == 500
    assert response.json() == INTERNAL
    assert response.headers["x-request-id"] == REQUEST_ID
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


@pytest.fixture
def refusing_db(runtime: Runtime) -> Iterator[None]:
    """A constraint only the database checks: an INSERT of ``entity_id = 'db-refuses'`` fails
    as a fault the API has no rule for would."""
    with runtime.engine.begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE system_events ADD CONSTRAINT ck_test_refuses "
                "CHECK (entity_id <> 'db-refuses')"
            )
        )
    yield
    with runtime.engine.begin() as conn:
        conn.execute(text("ALTER TABLE system_events DROP CONSTRAINT ck_test_refuses"))


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/system/events", {**SEED_PUBLISH_BODY, "entity_id": "db-refuses"}, "k-1"),
        ("/system/events", {**SEED_PUBLISH_BODY, "entity_id": "db-refuses"}, None),
        (
            "/system/events/batch",
            {"events": [{**SEED_PUBLISH_BODY, "entity_id": "db-refuses"}]},
            None,
        ),
        (
            "/system/events/batch",
            {"events": [{**SEED_PUBLISH_BODY, "entity_id": "db-refuses"}]},
            "k-2",
        ),
    ],
    ids=["keyed publish", "publish", "batch", "keyed batch"],
)
def test_a_database_fault_is_a_500_with_every_header(
    client: TestClient,
    token: TokenFactory,
    refusing_db: None,
    path: str,
    body: object,
    key: str | None,
) -> None:
    headers = {**auth(token(system=True)), "X-Request-ID": REQUEST_ID}
    if key:
        headers["Idempotency-Key"] = key

    response = client.post(path, headers=headers, json=body)

    assert_internal_error(response)


def test_a_bug_in_a_route_is_a_500_with_every_header(runtime: Runtime) -> None:
    # Given the real app with one route that fails as a bug would
    app = create_app(runtime=runtime)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": REQUEST_ID})
        # Then the answer is the envelope, with the headers; the app answers on afterwards
        assert_internal_error(response)
        assert client.get("/healthz").status_code == 200
