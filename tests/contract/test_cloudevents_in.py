"""CloudEvents 1.0 in: ``POST /system/events`` takes one CloudEvent in structured or binary HTTP
mode, written here by the CloudEvents SDK (an outsider's code, v2: ``cloudevents.core``), stored
as the seed's event with the documented mapping, its ``source`` + ``id`` publishing it once;
the seed's JSON body is answered as before."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, to_binary_event, to_structured_event
from cloudevents.core.v03.event import CloudEvent as CloudEvent03
from cloudevents.core.v1.event import CloudEvent
from fastapi.testclient import TestClient
from sqlalchemy import text

from bus.runtime import Runtime
from tests.support.factories import RFC3339_UTC, SEED_PUBLISH_BODY
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

PUBLISH = "/system/events"
DATA = {"previous_quantity": 100, "new_quantity": 95, "warehouse_id": "warehouse-uuid-1"}


@pytest.fixture(autouse=True)
def _no_keys(runtime: Runtime) -> Iterator[None]:
    """A CloudEvent's source + id is its publish's key: keys of earlier tests must not answer."""
    with runtime.engine.begin() as conn:
        conn.execute(text("TRUNCATE idempotency_keys"))
    yield


def cloud_event(data: Any = DATA, **attributes: Any) -> CloudEvent:
    """The seed's publish example as a CloudEvent: the SDK fills in ``id`` and ``time``."""
    given = {
        "type": "inventory_updated",
        "source": "inventory",
        "subject": "item-uuid-1",
        "targetmodule": "warehouse",
        "entitytype": "inventory_item",
        "datacontenttype": "application/json",
        **attributes,
    }
    return CloudEvent({k: v for k, v in given.items() if v is not None}, data)


def send(client: TestClient, headers: dict[str, str], message: HTTPMessage) -> Any:
    return client.post(PUBLISH, headers={**headers, **message.headers}, content=message.body)


def structured_without(event: CloudEvent, name: str) -> HTTPMessage:
    """The SDK's structured message with an attribute taken out (the SDK refuses to write an
    event without a required one)."""
    message = to_structured_event(event)
    body = json.loads(message.body)
    del body[name]
    return HTTPMessage(message.headers, json.dumps(body).encode())


def binary_without(event: CloudEvent, header: str) -> HTTPMessage:
    message = to_binary_event(event)
    return HTTPMessage({k: v for k, v in message.headers.items() if k != header}, message.body)


def listed(client: TestClient, headers: dict[str, str], **filters: str) -> list[dict[str, Any]]:
    response = client.get(PUBLISH, headers=headers, params=filters)
    assert response.status_code == 200, response.text
    return response.json()["events"]  # type: ignore[no-any-return]


def events_stored(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM system_events")).scalar_one())


MAPPED = {
    "event_type": "inventory_updated",
    "source_module": "inventory",
    "target_module": "warehouse",
    "entity_type": "inventory_item",
    "entity_id": "item-uuid-1",
    "event_data": DATA,
}


@pytest.mark.parametrize("write", [to_structured_event, to_binary_event])
def test_a_cloudevent_is_published_with_the_mapped_fields(
    client: TestClient, h: dict[str, str], write: Any
) -> None:
    # Given the seed's example written as a CloudEvent by the SDK
    message = write(cloud_event())
    # When it is published
    response = send(client, h, message)
    # Then it is the seed's publish answer, stored with type, source, targetmodule, entitytype,
    # subject and data in the seed's fields, and listed as such
    assert response.status_code == 201, response.text
    body = response.json()
    assert list(body) == ["success", "message", "event"]
    assert (body["success"], body["message"]) == (True, "Event published successfully")
    event = body["event"]
    assert {name: event[name] for name in MAPPED} == MAPPED
    assert event["tenant_id"] == str(TENANT_A)
    assert (event["status"], event["retry_count"]) == ("pending", 0)
    assert RFC3339_UTC.fullmatch(event["created_at"])
    assert (event["processed_at"], event["error_message"]) == (None, None)
    assert listed(client, h, event_type="inventory_updated") == [event]


def test_binary_mode_percent_decodes_its_headers(client: TestClient, h: dict[str, str]) -> None:
    # Given a subject with a space, a slash and a non-ASCII letter: the SDK percent-encodes it
    message = to_binary_event(cloud_event(subject="shelf 7/é"))
    assert message.headers["ce-subject"] == "shelf%207/%C3%A9"
    # When it is published, Then the entity is the subject as written
    response = send(client, h, message)
    assert response.status_code == 201, response.text
    assert response.json()["event"]["entity_id"] == "shelf 7/é"


def test_a_charset_is_allowed_on_either_content_type(client: TestClient, h: dict[str, str]) -> None:
    structured = to_structured_event(cloud_event())
    headers = {"content-type": "application/cloudevents+json; charset=utf-8"}
    binary = to_binary_event(cloud_event(datacontenttype="application/json; charset=utf-8"))

    assert send(client, h, HTTPMessage(headers, structured.body)).status_code == 201
    assert send(client, h, binary).status_code == 201


def test_binary_mode_without_a_content_type_reads_json(
    client: TestClient, h: dict[str, str]
) -> None:
    # (the SDK writes no Content-Type when the event has no datacontenttype)
    message = to_binary_event(cloud_event(datacontenttype=None))
    assert "content-type" not in {k.lower() for k in message.headers}

    response = send(client, h, message)

    assert response.status_code == 201, response.text
    assert response.json()["event"]["event_data"] == DATA


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("id", "Field required id"),
        ("source", "Field required source"),
        ("type", "Field required type"),
        ("specversion", "Field required specversion"),
        ("subject", "Field required subject"),
        ("targetmodule", "Field required target_module"),
        ("entitytype", "Field required entity_type"),
        ("data", "Field required data"),
    ],
)
def test_a_missing_attribute_is_named_structured(
    client: TestClient, h: dict[str, str], name: str, message: str
) -> None:
    response = send(client, h, structured_without(cloud_event(), name))

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": message}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("ce-id", "Field required id"),
        ("ce-source", "Field required source"),
        ("ce-type", "Field required type"),
        ("ce-specversion", "Field required specversion"),
        ("ce-subject", "Field required subject"),
        ("ce-targetmodule", "Field required target_module"),
        ("ce-entitytype", "Field required entity_type"),
    ],
)
def test_a_missing_attribute_is_named_binary(
    client: TestClient, h: dict[str, str], header: str, message: str
) -> None:
    response = send(client, h, binary_without(cloud_event(), header))

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": message}


def test_binary_mode_without_a_body_has_no_data(client: TestClient, h: dict[str, str]) -> None:
    message = to_binary_event(cloud_event(data=None))
    assert message.body == b""

    response = send(client, h, message)

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": "Field required data"}


@pytest.mark.parametrize("write", [to_structured_event, to_binary_event])
def test_a_specversion_other_than_1_0_is_refused(
    client: TestClient, h: dict[str, str], runtime: Runtime, write: Any
) -> None:
    # Given a CloudEvents 0.3 event, written by the SDK
    old = CloudEvent03(
        {
            "type": "inventory_updated",
            "source": "inventory",
            "subject": "item-uuid-1",
            "targetmodule": "warehouse",
            "entitytype": "inventory_item",
            "datacontenttype": "application/json",
        },
        DATA,
    )
    # When it is published, Then it is refused and nothing is stored
    response = send(client, h, write(old))
    assert response.status_code == 400
    assert response.json() == {"success": False, "message": "Invalid specversion"}
    assert events_stored(runtime) == 0


@pytest.mark.parametrize("data", [["an", "array"], "a string", 42, True])
@pytest.mark.parametrize("write", [to_structured_event, to_binary_event])
def test_data_that_is_not_a_json_object_is_refused(
    client: TestClient, h: dict[str, str], runtime: Runtime, data: Any, write: Any
) -> None:
    message = write(cloud_event(data=data))
    if write is to_binary_event:  # the SDK writes a body of JSON for an object only
        message = HTTPMessage(message.headers, json.dumps(data).encode())

    response = send(client, h, message)

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": "Event data must be object"}
    assert events_stored(runtime) == 0


def test_binary_data_is_refused(client: TestClient, h: dict[str, str]) -> None:
    # Given bytes as data: structured mode writes them as data_base64
    message = to_structured_event(cloud_event(data=b"\x00\x01", datacontenttype=None))
    assert "data_base64" in json.loads(message.body)

    response = send(client, h, message)

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": "Event data must be object"}


@pytest.mark.parametrize("write", [to_structured_event, to_binary_event])
def test_data_of_another_content_type_is_refused(
    client: TestClient, h: dict[str, str], write: Any
) -> None:
    message = write(cloud_event(data="plain words", datacontenttype="text/plain"))

    response = send(client, h, message)

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": "Invalid datacontenttype"}


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"source": "https://shop.example/inventory"}, "Invalid source"),
        ({"type": "inventory\nupdated"}, "Invalid type"),
        ({"targetmodule": "Warehouse"}, "Invalid target_module"),
        ({"subject": "x" * 256}, "Invalid subject"),
        ({"id": "x" * 256}, "Invalid id"),
    ],
)
def test_the_publish_rules_apply_to_the_mapped_attributes(
    client: TestClient, h: dict[str, str], attributes: dict[str, str], message: str
) -> None:
    response = send(client, h, to_structured_event(cloud_event(**attributes)))

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": message}


def test_a_time_that_is_not_rfc_3339_is_refused(client: TestClient, h: dict[str, str]) -> None:
    message = to_structured_event(cloud_event())
    body = {**json.loads(message.body), "time": "yesterday"}

    response = send(client, h, HTTPMessage(message.headers, json.dumps(body).encode()))

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": "Invalid time"}


def test_the_same_source_and_id_is_stored_once(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    # Given a CloudEvent published once
    event = cloud_event()
    first = send(client, h, to_structured_event(event))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    # When it is delivered again, in either mode (a producer's retry, an at-least-once relay)
    again = [send(client, h, to_structured_event(event)), send(client, h, to_binary_event(event))]
    # Then each is answered the first response, byte for byte, and one event is stored
    for response in again:
        assert response.status_code == 201
        assert response.content == first.content
        assert response.headers["idempotent-replayed"] == "true"
    assert events_stored(runtime) == 1
    # And another event with the same source and id is the reused key's 422, stored nowhere
    changed = cloud_event(data={"new_quantity": 1}, id=event.get_id())
    reused = send(client, h, to_structured_event(changed))
    assert reused.status_code == 422
    assert reused.json() == {
        "success": False,
        "message": "Idempotency key reused with a different request",
    }
    assert events_stored(runtime) == 1


def test_source_and_id_name_an_event_together_and_per_tenant(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    event = cloud_event()
    other_source = cloud_event(id=event.get_id(), source="shop")

    answers = [
        send(client, auth(token()), to_structured_event(event)),
        send(client, auth(token()), to_structured_event(other_source)),
        send(client, auth(token(TENANT_B)), to_structured_event(event)),
    ]

    assert [a.status_code for a in answers] == [201, 201, 201]
    assert not any("idempotent-replayed" in a.headers for a in answers)
    assert events_stored(runtime) == 3


def test_an_idempotency_key_header_wins_over_source_and_id(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    # Given two CloudEvents of different ids sent under one Idempotency-Key
    keyed = {**h, "Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = send(client, keyed, to_structured_event(cloud_event()))
    second = send(client, keyed, to_structured_event(cloud_event()))
    # Then the key names the request: the second is the first's replay
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert events_stored(runtime) == 1


def test_a_cloudevent_needs_the_rights_of_a_publish(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    message = to_structured_event(cloud_event())

    anonymous = send(client, {}, message)
    reader = send(client, auth(token(permissions=["read:system"])), message)
    other_tenant = client.post(
        PUBLISH,
        params={"tenant_id": str(TENANT_B)},
        headers={**auth(token()), **message.headers},
        content=message.body,
    )

    assert anonymous.status_code == 401
    assert reader.status_code == 403
    assert other_tenant.status_code == 403
    assert events_stored(runtime) == 0


def test_a_cloudevent_body_is_capped_as_a_json_body(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    size = runtime.settings.max_body_bytes
    message = to_structured_event(cloud_event(data={"filler": "x" * size}))

    response = send(client, h, message)

    assert response.status_code == 413
    assert response.json() == {"success": False, "message": "Request body too large"}


def test_the_seed_json_body_is_published_as_before(
    client: TestClient, h: dict[str, str], runtime: Runtime
) -> None:
    # Given the seed's body, sent twice, once without a Content-Type of JSON
    first = client.post(PUBLISH, headers=h, json=SEED_PUBLISH_BODY)
    second = client.post(
        PUBLISH,
        headers={**h, "Content-Type": "text/plain"},
        content=json.dumps(SEED_PUBLISH_BODY),
    )
    missing = client.post(PUBLISH, headers=h, json={**SEED_PUBLISH_BODY, "entity_id": None})
    # Then both are published (a seed body has no key of its own: two events) and the seed's
    # messages are unchanged
    for response in (first, second):
        assert response.status_code == 201, response.text
        assert "idempotent-replayed" not in response.headers
        event = response.json()["event"]
        assert {name: event[name] for name in SEED_PUBLISH_BODY} == SEED_PUBLISH_BODY
    assert events_stored(runtime) == 2
    assert missing.status_code == 400
    assert missing.json() == {"success": False, "message": "Field required entity_id"}


def test_the_openapi_document_describes_the_structured_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/system/events"]["post"]
    content = operation["requestBody"]["content"]

    assert list(content) == ["application/json", "application/cloudevents+json"]
    schema = content["application/cloudevents+json"]["schema"]
    assert schema["required"] == [
        "specversion",
        "id",
        "type",
        "source",
        "targetmodule",
        "entitytype",
        "subject",
        "data",
    ]
    assert schema["properties"]["specversion"]["enum"] == ["1.0"]
    assert schema["properties"]["data"]["type"] == "object"
    for words in ("application/cloudevents+json", "ce-targetmodule", "`subject` → `entity_id`"):
        assert words in operation["description"]
