"""Who may do what, in which tenant, and the tokens that must never get in.

GET needs manage:system or a system admin; POST and PUT also let a system token in. Anyone but
a system admin stays in the tenant of the token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from api.app import create_app
from bus.runtime import Runtime
from tests.support.envelope import assert_envelope
from tests.support.factories import NO_SUCH_EVENT, SEED_PUBLISH_BODY, make_event
from tests.support.forged_tokens import claims, hs256, hs512, unsigned, with_payload
from tests.support.services import make_settings
from tests.support.tokens import TENANT_A, TENANT_B, TEST_SECRET, TokenFactory, auth

EVENTS = "/system/events"
SECRET = TEST_SECRET.encode()
UNAUTHENTICATED = ("no token", "bad signature", "expired", "alg none")
KINDS = (*UNAUTHENTICATED, "no permission", "manage:system", "system token", "system admin")
OWN, OTHER = "own tenant", "other tenant"

# Expected status per endpoint: kind → (own tenant, other tenant). The event PUT targets lives in
# tenant A, the callers' own; "other tenant" means ?tenant_id=B.
EXPECTED: dict[str, dict[str, tuple[int, int]]] = {
    "GET": {
        "no permission": (403, 403),
        "manage:system": (200, 403),
        "system token": (403, 403),
        "system admin": (200, 200),
    },
    "POST": {
        "no permission": (403, 403),
        "manage:system": (201, 403),
        "system token": (201, 403),
        "system admin": (201, 201),
    },
    "PUT": {
        "no permission": (403, 403),
        "manage:system": (200, 403),
        "system token": (200, 403),
        "system admin": (200, 404),  # an admin may act in B, where A's event does not exist
    },
}
for _method in EXPECTED.values():
    _method.update(dict.fromkeys(UNAUTHENTICATED, (401, 401)))

SUCCESS_MESSAGES = {
    "GET": "Events retrieved successfully",
    "POST": "Event published successfully",
    "PUT": "Event updated successfully",
}


def error_message(status: int, kind: str) -> str:
    if status == 401:
        return "Authentication required" if kind == "no token" else "Invalid token"
    return {403: "Insufficient permissions", 404: "Event not found"}[status]


def header_for(kind: str, token: TokenFactory) -> dict[str, str]:
    if kind == "no token":
        return {}
    if kind == "bad signature":
        valid = token()
        return auth(valid[:-4] + ("AAAA" if not valid.endswith("AAAA") else "BBBB"))
    if kind == "expired":
        return auth(token(ttl=-30))
    if kind == "alg none":
        return auth(unsigned(claims(is_system_admin=True)))
    if kind == "no permission":
        return auth(token(permissions=[]))
    if kind == "manage:system":
        return auth(token())
    if kind == "system token":
        return auth(token(permissions=[], system=True))
    assert kind == "system admin"
    return auth(token(tenant=None, permissions=[], admin=True))


@pytest.mark.parametrize("where", [OWN, OTHER])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_matrix(
    client: TestClient, runtime: Runtime, token: TokenFactory, method: str, kind: str, where: str
) -> None:
    # Given an event in each tenant, and a caller of this kind acting in its own (A) or in B
    event = make_event(runtime, tenant_id=TENANT_A)
    make_event(runtime, tenant_id=TENANT_B)
    tenant = TENANT_A if where == OWN else TENANT_B
    path = f"{EVENTS}/{event['id']}" if method == "PUT" else EVENTS
    body = {"status": "processed"} if method == "PUT" else SEED_PUBLISH_BODY
    # When it calls the endpoint
    response = client.request(
        method,
        path,
        headers=header_for(kind, token),
        params={"tenant_id": str(tenant)},
        json=None if method == "GET" else body,
    )
    # Then the status is the matrix's, with the seed's envelope
    expected = EXPECTED[method][kind][0 if where == OWN else 1]
    assert response.status_code == expected, response.text
    if expected >= 400:
        assert_envelope(response, expected, error_message(expected, kind))
        assert (response.headers.get("www-authenticate") == "Bearer") == (expected == 401)
        return
    body_out = response.json()
    assert (body_out["success"], body_out["message"]) == (True, SUCCESS_MESSAGES[method])
    shown = body_out["events"] if method == "GET" else [body_out["event"]]
    assert shown
    assert {e["tenant_id"] for e in shown} == {str(tenant)}


def test_without_tenant_id_a_caller_acts_in_its_tokens_tenant(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    # Given events in tenants A and B
    make_event(runtime, tenant_id=TENANT_A)
    b_event = make_event(runtime, tenant_id=TENANT_B)
    h = auth(token(TENANT_B))
    # When a manage:system user of B names no tenant, then it sees, writes and updates in B
    listed = client.get(EVENTS, headers=h).json()
    assert [e["id"] for e in listed["events"]] == [str(b_event["id"])]
    created = client.post(EVENTS, headers=h, json=SEED_PUBLISH_BODY).json()["event"]
    assert created["tenant_id"] == str(TENANT_B)
    updated = client.put(f"{EVENTS}/{b_event['id']}", headers=h, json={"status": "processed"})
    assert updated.status_code == 200


def test_a_system_admin_naming_no_tenant_lists_every_tenant(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    made = {str(make_event(runtime, tenant_id=t)["id"]) for t in (TENANT_A, TENANT_B, uuid.uuid4())}

    body = client.get(EVENTS, headers=auth(token(None, [], admin=True))).json()

    assert {e["id"] for e in body["events"]} == made
    assert body["total"] == 3


def test_a_system_admin_naming_no_tenant_updates_any_tenants_event(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    event = make_event(runtime, tenant_id=TENANT_B)

    response = client.put(
        f"{EVENTS}/{event['id']}",
        headers=auth(token(None, [], admin=True)),
        json={"status": "failed", "error_message": "x"},
    )

    assert response.status_code == 200
    assert response.json()["event"]["tenant_id"] == str(TENANT_B)


def test_a_system_admin_publishing_needs_a_tenant_from_somewhere(
    client: TestClient, token: TokenFactory
) -> None:
    # Given a system admin whose token names no tenant
    h = auth(token(None, [], admin=True))
    # When it publishes naming none, then the tenant is a required field
    assert_envelope(
        client.post(EVENTS, headers=h, json=SEED_PUBLISH_BODY), 400, "Field required tenant_id"
    )
    # And an empty one is no tenant either
    response = client.post(EVENTS, headers=h, params={"tenant_id": ""}, json=SEED_PUBLISH_BODY)
    assert_envelope(response, 400, "Field required tenant_id")


def test_a_system_admin_publishing_without_tenant_id_uses_its_tokens(
    client: TestClient, token: TokenFactory
) -> None:
    response = client.post(
        EVENTS, headers=auth(token(TENANT_B, [], admin=True)), json=SEED_PUBLISH_BODY
    )

    assert response.json()["event"]["tenant_id"] == str(TENANT_B)


def test_another_tenants_event_does_not_exist_for_a_writer(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    event = make_event(runtime, tenant_id=TENANT_A)

    for h in (auth(token(TENANT_B)), auth(token(TENANT_B, [], system=True))):
        response = client.put(f"{EVENTS}/{event['id']}", headers=h, json={"status": "processed"})
        assert_envelope(response, 404, "Event not found")


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_a_caller_without_a_tenant_and_not_admin_acts_nowhere(
    client: TestClient, token: TokenFactory, method: str
) -> None:
    path = f"{EVENTS}/{uuid.uuid4()}" if method == "PUT" else EVENTS

    response = client.request(method, path, headers=auth(token(None)), json=SEED_PUBLISH_BODY)

    assert_envelope(response, 403, "Insufficient permissions")


@pytest.mark.parametrize(
    ("method", "path"), [("POST", EVENTS), ("PUT", f"{EVENTS}/{NO_SUCH_EVENT}")]
)
def test_permission_is_checked_before_the_body_is_read(
    client: TestClient, token: TokenFactory, method: str, path: str
) -> None:
    # Given a caller that may not write, sending a body that is not JSON and one too large
    h = auth(token(permissions=[]))
    for raw in (b"not json", b" " * (2 * 1024 * 1024)):
        # When it is sent, then the answer is about the caller, not the body
        response = client.request(method, path, headers=h, content=raw)
        assert_envelope(response, 403, "Insufficient permissions")
    # And without any token it is 401 first
    assert_envelope(client.request(method, path, content=b"x"), 401, "Authentication required")


def test_a_permission_of_another_name_is_not_manage_system(
    client: TestClient, token: TokenFactory
) -> None:
    for permissions in (["read:system"], ["manage:systems"], ["MANAGE:SYSTEM"], ["manage"]):
        response = client.get(EVENTS, headers=auth(token(permissions=permissions)))
        assert_envelope(response, 403, "Insufficient permissions")


# --- Tokens that must not get in -------------------------------------------------------------


def assert_invalid_token(response: Any) -> None:
    assert_envelope(response, 401, "Invalid token")
    assert response.headers["www-authenticate"] == "Bearer"


def get_with(client: TestClient, token: str) -> Any:
    return client.get(EVENTS, headers=auth(token))


def test_a_well_formed_token_gets_in(client: TestClient) -> None:
    # The control for every attack below: the same claims, properly signed, are let in.
    assert get_with(client, hs256(claims(), SECRET)).status_code == 200


def in_seconds(seconds: int) -> int:
    return int(time.time()) + seconds


ATTACKS: dict[str, Callable[[], str]] = {
    "alg none": lambda: unsigned(claims(is_system_admin=True)),
    "alg None": lambda: unsigned(claims(), alg="None"),
    "alg NONE": lambda: unsigned(claims(), alg="NONE"),
    "alg none with a signature": lambda: unsigned(claims()) + "c2lnbmF0dXJl",
    "HS256 under another secret": lambda: hs256(claims(), b"another-secret-" * 4),
    "HS512 under the right secret": lambda: hs512(claims(), SECRET),
    "HS256 labelled HS512": lambda: hs256(claims(), SECRET, alg="HS512"),
    "expired": lambda: hs256(claims(exp=in_seconds(-5)), SECRET),
    "not yet valid": lambda: hs256(claims(nbf=in_seconds(600)), SECRET),
    "missing exp": lambda: hs256(claims(exp=None), SECRET),
    "missing sub": lambda: hs256(claims(sub=None), SECRET),
    "numeric sub": lambda: hs256(claims(sub=42), SECRET),
    "string exp": lambda: hs256(claims(exp="tomorrow"), SECRET),
    "permissions as a string": lambda: hs256(claims(permissions="manage:system"), SECRET),
    "admin as a string": lambda: hs256(claims(is_system_admin="true"), SECRET),
    "tenant not a uuid": lambda: hs256(claims(tenant_id="tenant-uuid"), SECRET),
    "unknown token type": lambda: hs256(claims(token_type="service"), SECRET),
    "not a jwt": lambda: "not-a-jwt",
    "two segments": lambda: hs256(claims(), SECRET).rsplit(".", 1)[0],
}


@pytest.mark.parametrize("name", ATTACKS)
def test_attack(client: TestClient, name: str) -> None:
    assert_invalid_token(get_with(client, ATTACKS[name]()))


def test_a_tampered_payload(client: TestClient, token: TokenFactory) -> None:
    # Given a valid token of a user without permissions
    valid = token(permissions=[])
    assert get_with(client, valid).status_code == 403
    # When its payload is swapped for an admin's, keeping the signature
    forged = with_payload(valid, claims(is_system_admin=True, permissions=[]))
    # Then it is refused
    assert_invalid_token(get_with(client, forged))


# --- Tokens under other verifier settings ----------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_of(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


AppFactory = Callable[..., TestClient]


@pytest.fixture
def app_with(database_url: str, runtime: Runtime) -> Iterator[AppFactory]:
    """``app_with(**settings)``: a client of an app over the test database with other settings."""
    buses: list[Runtime] = []

    def make(**overrides: Any) -> TestClient:
        other = Runtime(make_settings(database_url, **overrides))
        buses.append(other)
        return TestClient(create_app(runtime=other), raise_server_exceptions=False)

    yield make
    for other in buses:
        other.close()


def test_rs256_configured_refuses_hs256_signed_with_the_public_key(
    app_with: AppFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    # Given an app that verifies RS256 with a public key
    pem = pem_of(rsa_key)
    client = app_with(jwt_public_key=pem)
    # And a token it accepts (the control)
    good = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert get_with(client, good).status_code == 200
    # When tokens are HMAC-signed with the public key's PEM text (or its bytes stripped)
    for secret in (pem.encode(), pem.strip().encode(), TEST_SECRET.encode()):
        # Then they are refused
        assert_invalid_token(get_with(client, hs256(claims(is_system_admin=True), secret)))
    assert_invalid_token(get_with(client, unsigned(claims())))


def test_rs256_from_another_key_is_refused(
    app_with: AppFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    client = app_with(jwt_public_key=pem_of(rsa_key))
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    assert_invalid_token(get_with(client, jwt.encode(claims(), stranger, algorithm="RS256")))


ISSUER, AUDIENCE = "https://auth.example.test", "eventbus"


@pytest.mark.parametrize(
    ("changes", "admitted"),
    [
        ({}, True),
        ({"aud": "another-service"}, False),
        ({"aud": None}, False),
        ({"iss": "https://evil.example.test"}, False),
        ({"iss": None}, False),
        ({"aud": [AUDIENCE, "other"]}, True),
    ],
    ids=["control", "wrong aud", "no aud", "wrong iss", "no iss", "aud list"],
)
def test_issuer_and_audience_when_configured(
    app_with: AppFactory, changes: dict[str, Any], admitted: bool
) -> None:
    client = app_with(jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    token = hs256(claims(**{"iss": ISSUER, "aud": AUDIENCE, **changes}), TEST_SECRET.encode())

    response = get_with(client, token)

    if admitted:
        assert response.status_code == 200, response.text
    else:
        assert_invalid_token(response)
