"""``/system/endpoints`` (issue 22, step 1): webhook endpoints as a resource, on PostgreSQL.

Envelopes and messages to the letter, rights and tenancy (one tenant never reads nor changes
another's endpoint), the SSRF refusals at creation, secrets generated, given and rotated, and
the signatures of a rotation verified by the ``standardwebhooks`` package. URLs are literal
public addresses unless a test is about names, so no test needs DNS beyond ``localhost``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.app import create_app
from bus.events.rules import utcnow
from bus.events.schemas import parse_timestamp
from bus.runtime import Runtime
from bus.storage import endpoint_store
from bus.storage.migrate import upgrade
from bus.webhooks import signing
from bus.webhooks.endpoints import MAX_ENDPOINTS_PER_TENANT, signing_secrets
from tests.support.envelope import assert_envelope
from tests.support.factories import RFC3339_UTC
from tests.support.services import make_settings
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

ENDPOINTS = "/system/endpoints"
URL = "https://93.184.215.14/hooks/eventbus"
NEW = {"target_module": "warehouse", "url": URL}
VIEW_FIELDS = [
    "id",
    "tenant_id",
    "target_module",
    "url",
    "event_types",
    "format",
    "enabled",
    "ordered",
    "disabled_reason",
    "failing_since",
    "previous_secret_expires_at",
    "created_at",
    "updated_at",
]
NO_SUCH_ENDPOINT = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


@pytest.fixture(autouse=True)
def _no_endpoints(runtime: Runtime) -> Iterator[None]:
    with runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM webhook_endpoints"))
    yield


@pytest.fixture
def admin(token: TokenFactory) -> dict[str, str]:
    """A system admin without a tenant of its own."""
    return auth(token(tenant=None, permissions=[], admin=True))


def create(client: TestClient, h: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(ENDPOINTS, headers=h, json={**NEW, **body})
    endpoint: dict[str, Any] = assert_envelope(response, 201)["endpoint"]
    return endpoint


def stored_secrets(runtime: Runtime, endpoint_id: str) -> list[str]:
    """The secrets a delivery would be signed with now."""
    with runtime.sessions() as session:
        row = endpoint_store.get(session, uuid.UUID(endpoint_id), None)
    assert row is not None
    return signing_secrets(row, utcnow())


# --- the resource ----------------------------------------------------------------------------


def test_create_answers_the_endpoint_with_its_secret(client: TestClient, h: dict[str, str]) -> None:
    response = client.post(ENDPOINTS, headers=h, json=NEW)

    body = assert_envelope(response, 201)
    assert list(body) == ["success", "message", "endpoint"]
    assert body["success"] is True
    assert body["message"] == "Endpoint created successfully"
    endpoint = body["endpoint"]
    assert list(endpoint) == [*VIEW_FIELDS, "secret"]
    assert uuid.UUID(endpoint["id"])
    assert endpoint["tenant_id"] == str(TENANT_A)
    assert (endpoint["target_module"], endpoint["url"]) == ("warehouse", URL)
    assert endpoint["event_types"] is None  # every event type of the module
    assert (endpoint["format"], endpoint["enabled"], endpoint["ordered"]) == ("seed", True, False)
    assert endpoint["disabled_reason"] is None
    assert endpoint["previous_secret_expires_at"] is None
    assert RFC3339_UTC.fullmatch(endpoint["created_at"])
    assert endpoint["updated_at"] == endpoint["created_at"]
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24


def test_every_field_of_a_create(client: TestClient, h: dict[str, str]) -> None:
    given = "whsec_" + base64.b64encode(b"k" * 32).decode()

    endpoint = create(
        client,
        h,
        event_types=["inventory_updated", "stock_counted", "inventory_updated"],
        format="cloudevents-binary",
        enabled=False,
        ordered=True,
        secret=given,
    )

    assert endpoint["event_types"] == ["inventory_updated", "stock_counted"]  # a repeat once
    assert endpoint["format"] == "cloudevents-binary"
    assert (endpoint["enabled"], endpoint["ordered"]) == (False, True)
    assert endpoint["secret"] == given
    assert create(client, h, format="cloudevents-structured")["format"] == "cloudevents-structured"


def test_the_secret_is_shown_on_create_only(client: TestClient, h: dict[str, str]) -> None:
    endpoint = create(client, h)

    got = assert_envelope(client.get(f"{ENDPOINTS}/{endpoint['id']}", headers=h), 200)
    listed = assert_envelope(client.get(ENDPOINTS, headers=h), 200)
    updated = client.put(f"{ENDPOINTS}/{endpoint['id']}", headers=h, json={"ordered": True})

    assert got == {
        "success": True,
        "message": "Endpoint retrieved successfully",
        "endpoint": {k: v for k, v in endpoint.items() if k != "secret"},
    }
    assert listed["endpoints"][0] == got["endpoint"]
    assert "secret" not in assert_envelope(updated, 200)["endpoint"]
    assert endpoint["secret"] not in client.get(ENDPOINTS, headers=h).text


def test_list_oldest_first_and_by_module(client: TestClient, h: dict[str, str]) -> None:
    first = create(client, h)
    second = create(client, h, target_module="billing")
    third = create(client, h)

    everything = assert_envelope(client.get(ENDPOINTS, headers=h), 200)
    warehouse = client.get(ENDPOINTS, headers=h, params={"target_module": "warehouse"}).json()
    nothing = client.get(ENDPOINTS, headers=h, params={"target_module": "shipping"}).json()

    assert list(everything) == ["success", "message", "endpoints"]
    assert everything["message"] == "Endpoints retrieved successfully"
    assert [e["id"] for e in everything["endpoints"]] == [first["id"], second["id"], third["id"]]
    assert [e["id"] for e in warehouse["endpoints"]] == [first["id"], third["id"]]
    assert nothing == {
        "success": True,
        "message": "Endpoints retrieved successfully",
        "endpoints": [],
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"target_module": "Ware house"}, "Invalid target_module"),
        ({"tenant_id": "not-a-uuid"}, "Invalid tenant_id"),
        ({"module": "warehouse"}, "Unknown query parameter"),
    ],
)
def test_the_list_refuses_a_bad_query(
    client: TestClient, h: dict[str, str], params: dict[str, str], message: str
) -> None:
    assert_envelope(client.get(ENDPOINTS, headers=h, params=params), 400, message)


def test_update_changes_what_the_body_names(client: TestClient, h: dict[str, str]) -> None:
    endpoint = create(client, h, event_types=["inventory_updated"])
    path = f"{ENDPOINTS}/{endpoint['id']}"

    response = client.put(
        path,
        headers=h,
        json={"url": "http://93.184.215.14:8080/v2", "format": "cloudevents-structured"},
    )

    body = assert_envelope(response, 200)
    assert body["message"] == "Endpoint updated successfully"
    updated = body["endpoint"]
    assert updated["url"] == "http://93.184.215.14:8080/v2"
    assert updated["format"] == "cloudevents-structured"
    assert updated["event_types"] == ["inventory_updated"]  # not named: unchanged
    assert parse_timestamp(updated["updated_at"], "t") > parse_timestamp(
        endpoint["created_at"], "t"
    )
    # event_types null: every event type again
    cleared = client.put(path, headers=h, json={"event_types": None}).json()["endpoint"]
    assert cleared["event_types"] is None
    assert client.get(path, headers=h).json()["endpoint"] == cleared


def test_an_update_that_changes_nothing_writes_nothing(
    client: TestClient, h: dict[str, str]
) -> None:
    endpoint = create(client, h)
    path = f"{ENDPOINTS}/{endpoint['id']}"

    for body in ({}, {"enabled": True, "format": "seed", "url": URL}):
        same = assert_envelope(client.put(path, headers=h, json=body), 200)["endpoint"]
        assert same["updated_at"] == endpoint["updated_at"]


def test_disabling_and_enabling(client: TestClient, h: dict[str, str], runtime: Runtime) -> None:
    endpoint = create(client, h)
    path = f"{ENDPOINTS}/{endpoint['id']}"

    disabled = client.put(path, headers=h, json={"enabled": False}).json()["endpoint"]
    assert (disabled["enabled"], disabled["disabled_reason"]) == (False, "Disabled by an operator")

    # Given the bus disabled it itself (as the delivery step will: a 410, failing too long)
    with runtime.engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_endpoints SET disabled_reason = 'Endpoint answered 410 Gone'")
        )
    # Then disabling it again keeps the bus's reason, and enabling clears it
    again = client.put(path, headers=h, json={"enabled": False}).json()["endpoint"]
    assert again["disabled_reason"] == "Endpoint answered 410 Gone"
    enabled = client.put(path, headers=h, json={"enabled": True}).json()["endpoint"]
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)


def test_delete(client: TestClient, h: dict[str, str]) -> None:
    endpoint = create(client, h)
    kept = create(client, h)
    path = f"{ENDPOINTS}/{endpoint['id']}"

    body = assert_envelope(client.delete(path, headers=h), 200)

    assert body == {
        "success": True,
        "message": "Endpoint deleted successfully",
        "endpoint": {k: v for k, v in endpoint.items() if k != "secret"},
    }
    for method in ("GET", "PUT", "DELETE"):
        gone = client.request(method, path, headers=h, json={} if method == "PUT" else None)
        assert_envelope(gone, 404, "Endpoint not found")
    assert_envelope(client.post(f"{path}/rotate-secret", headers=h), 404, "Endpoint not found")
    assert [e["id"] for e in client.get(ENDPOINTS, headers=h).json()["endpoints"]] == [kept["id"]]


@pytest.mark.parametrize(
    "endpoint_id", [NO_SUCH_ENDPOINT, "not-a-uuid", "7C1D2E3F4A5B4C6D8E7F9A0B1C2D3E4F"]
)
def test_an_unknown_id_is_not_found(
    client: TestClient, h: dict[str, str], endpoint_id: str
) -> None:
    path = f"{ENDPOINTS}/{endpoint_id}"
    assert_envelope(client.get(path, headers=h), 404, "Endpoint not found")
    assert_envelope(client.put(path, headers=h, json={"ordered": True}), 404, "Endpoint not found")
    assert_envelope(client.delete(path, headers=h), 404, "Endpoint not found")
    assert_envelope(client.post(f"{path}/rotate-secret", headers=h), 404, "Endpoint not found")


def test_a_tenant_has_at_most_so_many_endpoints(
    client: TestClient, h: dict[str, str], token: TokenFactory
) -> None:
    for _ in range(MAX_ENDPOINTS_PER_TENANT):
        create(client, h)

    assert_envelope(client.post(ENDPOINTS, headers=h, json=NEW), 400, "Too many endpoints")
    create(client, auth(token(tenant=TENANT_B)))  # another tenant's count is its own


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"url": URL}, "Field required target_module"),
        ({"target_module": "warehouse"}, "Field required url"),
        ({"target_module": "  ", "url": URL}, "Field required target_module"),
        ({"target_module": "warehouse", "url": None}, "Field required url"),
        ({**NEW, "target_module": "Warehouse!"}, "Invalid target_module"),
        ({**NEW, "target_module": 7}, "Invalid target_module"),
        ({**NEW, "url": "ftp://93.184.215.14/"}, "Invalid url"),
        ({**NEW, "url": "https://user:pw@93.184.215.14/"}, "Invalid url"),
        ({**NEW, "url": "hooks.example.com/x"}, "Invalid url"),
        ({**NEW, "url": ["https://93.184.215.14/"]}, "Invalid url"),
        ({**NEW, "event_types": []}, "Invalid event_types"),
        ({**NEW, "event_types": "inventory_updated"}, "Invalid event_types"),
        ({**NEW, "event_types": ["ok", 1]}, "Invalid event_types"),
        ({**NEW, "event_types": ["  "]}, "Invalid event_types"),
        ({**NEW, "event_types": ["x"] * 101}, "Invalid event_types"),
        ({**NEW, "format": "xml"}, "Invalid format"),
        ({**NEW, "format": None}, "Invalid format"),
        ({**NEW, "enabled": "true"}, "Invalid enabled"),
        ({**NEW, "ordered": 1}, "Invalid ordered"),
        ({**NEW, "secret": "hunter2"}, "Invalid secret"),
        ({**NEW, "secret": "whsec_" + base64.b64encode(b"short").decode()}, "Invalid secret"),
        ({**NEW, "secret": "whsec_" + base64.b64encode(b"k" * 65).decode()}, "Invalid secret"),
        ({**NEW, "enabeld": False}, "Unknown body field"),
        ({**NEW, "tenant_id": str(TENANT_B)}, "Unknown body field"),  # the query names it
        ([NEW], "Invalid JSON body"),
    ],
)
def test_a_create_body_is_checked(
    client: TestClient, h: dict[str, str], body: Any, message: str
) -> None:
    assert_envelope(client.post(ENDPOINTS, headers=h, json=body), 400, message)
    assert client.get(ENDPOINTS, headers=h).json()["endpoints"] == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"{", "Invalid JSON body"), (b'{"url": 1, "url": 2}', "Duplicate key in JSON body")],
)
def test_a_create_body_must_be_json(
    client: TestClient, h: dict[str, str], raw: bytes, message: str
) -> None:
    response = client.post(
        ENDPOINTS, headers={**h, "Content-Type": "application/json"}, content=raw
    )
    assert_envelope(response, 400, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"target_module": "billing"}, "Field cannot be updated target_module"),
        ({"secret": signing.new_secret()}, "Field cannot be updated secret"),
        ({"disabled_reason": None}, "Field cannot be updated disabled_reason"),
        ({"created_at": "2023-04-01T10:00:00Z"}, "Field cannot be updated created_at"),
        ({"enabeld": True}, "Unknown body field"),
        ({"url": None}, "Invalid url"),
        ({"url": ""}, "Invalid url"),
        ({"url": "http://127.0.0.1:9000/"}, "URL not allowed"),
        ({"event_types": []}, "Invalid event_types"),
        ({"format": "json"}, "Invalid format"),
        ({"enabled": None}, "Invalid enabled"),
        ({"ordered": "yes"}, "Invalid ordered"),
        ("ordered", "Invalid JSON body"),
    ],
)
def test_an_update_body_is_checked(
    client: TestClient, h: dict[str, str], body: Any, message: str
) -> None:
    endpoint = create(client, h)
    path = f"{ENDPOINTS}/{endpoint['id']}"

    assert_envelope(client.put(path, headers=h, json=body), 400, message)
    unchanged = client.get(path, headers=h).json()["endpoint"]
    assert unchanged == {k: v for k, v in endpoint.items() if k != "secret"}


# --- rights and tenancy ----------------------------------------------------------------------


def test_one_tenant_never_reads_nor_changes_anothers_endpoint(
    client: TestClient, h: dict[str, str], token: TokenFactory
) -> None:
    # Given an endpoint of tenant A
    endpoint = create(client, h)
    path = f"{ENDPOINTS}/{endpoint['id']}"
    b = auth(token(tenant=TENANT_B))

    # Then tenant B does not see it, nor can it change, rotate or delete it
    assert client.get(ENDPOINTS, headers=b).json()["endpoints"] == []
    assert_envelope(client.get(path, headers=b), 404, "Endpoint not found")
    assert_envelope(client.put(path, headers=b, json={"enabled": False}), 404, "Endpoint not found")
    assert_envelope(client.post(f"{path}/rotate-secret", headers=b), 404, "Endpoint not found")
    assert_envelope(client.delete(path, headers=b), 404, "Endpoint not found")
    # and naming tenant A in the query is refused
    for_a = {"tenant_id": str(TENANT_A)}
    assert_envelope(client.get(ENDPOINTS, headers=b, params=for_a), 403, "Insufficient permissions")
    assert_envelope(client.get(path, headers=b, params=for_a), 403, "Insufficient permissions")
    assert_envelope(
        client.post(ENDPOINTS, headers=b, params=for_a, json=NEW), 403, "Insufficient permissions"
    )
    # and A's endpoint is as it was
    assert client.get(path, headers=h).json()["endpoint"] == {
        k: v for k, v in endpoint.items() if k != "secret"
    }
    assert len(client.get(ENDPOINTS, headers=h).json()["endpoints"]) == 1


def test_a_system_admin_names_the_tenant(
    client: TestClient, h: dict[str, str], admin: dict[str, str]
) -> None:
    a_endpoint = create(client, h)
    for_b = {"tenant_id": str(TENANT_B)}

    # A create needs a tenant: the query's (the admin's token has none)
    assert_envelope(
        client.post(ENDPOINTS, headers=admin, json=NEW), 400, "Field required tenant_id"
    )
    b_endpoint = assert_envelope(
        client.post(ENDPOINTS, headers=admin, params=for_b, json=NEW), 201
    )["endpoint"]
    assert b_endpoint["tenant_id"] == str(TENANT_B)

    # Naming no tenant: every tenant's; naming B: B's only, A's endpoint is not found there
    everyone = client.get(ENDPOINTS, headers=admin).json()["endpoints"]
    assert [e["id"] for e in everyone] == [a_endpoint["id"], b_endpoint["id"]]
    only_b = client.get(ENDPOINTS, headers=admin, params=for_b).json()["endpoints"]
    assert [e["id"] for e in only_b] == [b_endpoint["id"]]
    a_path = f"{ENDPOINTS}/{a_endpoint['id']}"
    assert_envelope(client.get(a_path, headers=admin, params=for_b), 404, "Endpoint not found")
    assert_envelope(client.get(a_path, headers=admin), 200)
    changed = client.put(a_path, headers=admin, json={"ordered": True})
    assert assert_envelope(changed, 200)["endpoint"]["ordered"] is True


@pytest.mark.parametrize(
    ("kind", "status", "message"),
    [
        ("no token", 401, "Authentication required"),
        ("no permission", 403, "Insufficient permissions"),
        ("system token", 403, "Insufficient permissions"),
    ],
)
def test_who_may_not(
    client: TestClient,
    h: dict[str, str],
    token: TokenFactory,
    kind: str,
    status: int,
    message: str,
) -> None:
    endpoint = create(client, h)
    path = f"{ENDPOINTS}/{endpoint['id']}"
    headers = {
        "no token": {},
        "no permission": auth(token(permissions=[])),
        "system token": auth(token(permissions=[], system=True)),
    }[kind]

    for method, url, body in [
        ("POST", ENDPOINTS, NEW),
        ("GET", ENDPOINTS, None),
        ("GET", path, None),
        ("PUT", path, {"enabled": False}),
        ("DELETE", path, None),
        ("POST", f"{path}/rotate-secret", None),
    ]:
        response = client.request(method, url, headers=headers, json=body)
        assert_envelope(response, status, message)
    assert client.get(path, headers=h).json()["endpoint"]["enabled"] is True


# --- the URL policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",  # loopback
        "http://[::1]:8080/hook",
        "http://10.1.2.3/hook",  # private
        "http://192.168.0.10/hook",
        "http://172.20.0.1/hook",
        "http://169.254.10.1/hook",  # link-local
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://0.0.0.0:8000/",  # unspecified
        "http://[::ffff:127.0.0.1]/",  # loopback, mapped into IPv6
        "http://localhost:8000/hook",  # a name resolving to loopback
        "http://LocalHost/hook",
    ],
)
def test_internal_urls_are_refused(client: TestClient, h: dict[str, str], url: str) -> None:
    response = client.post(ENDPOINTS, headers=h, json={**NEW, "url": url})

    assert_envelope(response, 400, "URL not allowed")


class TestAllowNetworks:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"webhook_allow_networks": "127.0.0.0/8"}

    def test_a_listed_network_is_allowed(self, client: TestClient, h: dict[str, str]) -> None:
        for url in ("http://127.0.0.1:8080/hook", "http://localhost:8080/hook"):
            assert create(client, h, url=url)["url"] == url

    def test_others_stay_refused(self, client: TestClient, h: dict[str, str]) -> None:
        for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://[::1]/"):
            response = client.post(ENDPOINTS, headers=h, json={**NEW, "url": url})
            assert_envelope(response, 400, "URL not allowed")


# --- secrets ---------------------------------------------------------------------------------


def test_rotation_keeps_the_old_secret_for_a_while(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    # Given an endpoint with its first secret
    endpoint = create(client, h)
    old = endpoint["secret"]
    path = f"{ENDPOINTS}/{endpoint['id']}"

    # When its secret is rotated
    before = utcnow()
    response = client.post(f"{path}/rotate-secret", headers=h)

    # Then the answer shows the new secret, once, and when the old one expires
    body = assert_envelope(response, 200)
    assert (body["success"], body["message"]) == (True, "Secret rotated successfully")
    rotated = body["endpoint"]
    assert list(rotated) == [*VIEW_FIELDS, "secret"]
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    expires = parse_timestamp(rotated["previous_secret_expires_at"], "t")
    assert before + timedelta(seconds=86400) <= expires + timedelta(seconds=1)
    assert expires <= utcnow() + timedelta(seconds=86400)
    got = client.get(path, headers=h).json()["endpoint"]
    assert "secret" not in got
    assert got["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]

    # And a delivery now is signed with both: a receiver on either secret verifies it
    secrets = stored_secrets(runtime, endpoint["id"])
    assert secrets == [new, old]
    delivery = b'{"event_type":"inventory_updated"}'
    headers = signing.headers(str(uuid.uuid4()), delivery, secrets)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        assert Webhook(secret).verify(delivery, headers) == {"event_type": "inventory_updated"}


def test_a_second_rotation_drops_the_oldest_secret(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    endpoint = create(client, h)
    rotate = f"{ENDPOINTS}/{endpoint['id']}/rotate-secret"
    second = client.post(rotate, headers=h).json()["endpoint"]["secret"]
    third = client.post(rotate, headers=h).json()["endpoint"]["secret"]

    secrets = stored_secrets(runtime, endpoint["id"])

    assert secrets == [third, second]
    headers = signing.headers("msg_1", b"{}", secrets)
    Webhook(third).verify(b"{}", headers)
    Webhook(second).verify(b"{}", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint["secret"]).verify(b"{}", headers)


def test_an_update_keeps_the_secrets(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    endpoint = create(client, h)
    path = f"{ENDPOINTS}/{endpoint['id']}"
    new = client.post(f"{path}/rotate-secret", headers=h).json()["endpoint"]["secret"]

    client.put(path, headers=h, json={"ordered": True})

    assert stored_secrets(runtime, endpoint["id"]) == [new, endpoint["secret"]]


class TestNoOverlap:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"webhook_secret_overlap_seconds": 0}

    def test_the_old_secret_ends_at_once(
        self, client: TestClient, h: dict[str, str], runtime: Runtime
    ) -> None:
        endpoint = create(client, h)
        rotated = client.post(f"{ENDPOINTS}/{endpoint['id']}/rotate-secret", headers=h).json()

        assert rotated["endpoint"]["previous_secret_expires_at"] is None
        assert stored_secrets(runtime, endpoint["id"]) == [rotated["endpoint"]["secret"]]


def test_an_expired_secret_no_longer_signs(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    endpoint = create(client, h)
    path = f"{ENDPOINTS}/{endpoint['id']}"
    new = client.post(f"{path}/rotate-secret", headers=h).json()["endpoint"]["secret"]

    # Given the overlap has run out (the stored expiry moved into the past)
    with runtime.sessions() as session:
        row = endpoint_store.get(session, uuid.UUID(endpoint["id"]), None)
        assert row is not None
        later = row.secrets[1].expires_at
        assert later is not None
        assert signing_secrets(row, later) == [new]
        assert signing_secrets(row, later - timedelta(seconds=1)) == [new, endpoint["secret"]]


# --- SQLite (eventbus dev) -------------------------------------------------------------------


def test_the_same_on_sqlite(tmp_path: Path, token: TokenFactory) -> None:
    # Given make dev's database: SQLite, migrated as `eventbus dev` does
    url = f"sqlite:///{tmp_path / 'eventbus.db'}"
    upgrade(url)
    runtime = Runtime(make_settings(url, broker_url="memory://"))
    h = auth(token())
    try:
        with TestClient(create_app(runtime=runtime), raise_server_exceptions=False) as client:
            # Then an endpoint is created, listed, changed, rotated and deleted there too
            endpoint = create(client, h, event_types=["inventory_updated"], ordered=True)
            path = f"{ENDPOINTS}/{endpoint['id']}"
            listed = client.get(ENDPOINTS, headers=h).json()["endpoints"]
            assert listed == [{k: v for k, v in endpoint.items() if k != "secret"}]
            changed = client.put(path, headers=h, json={"enabled": False}).json()["endpoint"]
            assert changed["disabled_reason"] == "Disabled by an operator"
            new = client.post(f"{path}/rotate-secret", headers=h).json()["endpoint"]["secret"]
            assert stored_secrets(runtime, endpoint["id"]) == [new, endpoint["secret"]]
            assert_envelope(client.delete(path, headers=h), 200)
            assert client.get(ENDPOINTS, headers=h).json()["endpoints"] == []
    finally:
        runtime.close()
