"""What a webhook delivery sends, read back with outsiders' code: Standard Webhooks' library
verifies the signatures, the CloudEvents SDK parses the envelopes, and the bus's own
CloudEvents reader maps them back onto the publish they came from."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary, from_http, from_structured
from cloudevents.core.formats.json import JSONFormat
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bus.events.cloudevents import parse_cloudevent, read_binary, read_structured
from bus.events.schemas import event_view
from bus.storage.models import EndpointFormat, SystemEvent
from bus.webhooks import payloads
from bus.webhooks.signing import new_secret
from tests.support.factories import event_values

CREATED = datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)


def make_event(**overrides: Any) -> dict[str, Any]:
    """The seed's event object of a stored event (what the list endpoint shows)."""
    values = event_values(created_at=CREATED, **overrides)
    return event_view(SystemEvent(**values))


def verified(secret: str, headers: dict[str, str], body: bytes) -> Any:
    return Webhook(secret).verify(body, headers)


def test_seed_body_is_the_event_object_signed() -> None:
    # Given a stored event and an endpoint in the seed's format
    event = make_event()
    secret = new_secret()

    # When a delivery is built
    headers, body = payloads.build(event, "seed", [secret])

    # Then the body is the event object, compact UTF-8 JSON, and it verifies
    assert json.loads(body) == json.loads(json.dumps(event))
    assert body == json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "eventbus-webhooks/1"
    assert headers["webhook-id"] == event["id"]
    assert verified(secret, headers, body)["entity_id"] == "item-uuid-1"


def test_every_secret_of_a_rotation_verifies_and_no_other() -> None:
    current, previous = new_secret(), new_secret()
    for fmt in EndpointFormat:
        headers, body = payloads.build(make_event(), fmt, [current, previous])
        assert len(headers["webhook-signature"].split(" ")) == 2
        verified(current, headers, body)
        verified(previous, headers, body)
        with pytest.raises(WebhookVerificationError):
            verified(new_secret(), headers, body)


def test_body_change_breaks_the_signature() -> None:
    secret = new_secret()
    headers, body = payloads.build(make_event(), "seed", [secret])
    with pytest.raises(WebhookVerificationError):
        verified(secret, headers, body.replace(b"95", b"96"))


def test_timestamp_given_is_the_one_signed() -> None:
    headers, _ = payloads.build(make_event(), "seed", [new_secret()], timestamp=1_700_000_000)
    assert headers["webhook-timestamp"] == "1700000000"


def test_structured_is_a_cloudevent_the_sdk_reads() -> None:
    event = make_event()
    secret = new_secret()
    headers, body = payloads.build(event, "cloudevents-structured", [secret])
    verified(secret, headers, body)
    assert headers["content-type"] == "application/cloudevents+json; charset=utf-8"

    parsed = from_structured(HTTPMessage(headers, body), JSONFormat())
    assert parsed.get_specversion() == "1.0"
    assert parsed.get_id() == event["id"]
    assert parsed.get_source() == "inventory"
    assert parsed.get_type() == "inventory_updated"
    assert parsed.get_subject() == "item-uuid-1"
    assert parsed.get_time() == CREATED
    assert parsed.get_datacontenttype() == "application/json"
    assert parsed.get_extension("targetmodule") == "warehouse"
    assert parsed.get_extension("entitytype") == "inventory_item"
    assert parsed.get_extension("tenantid") == event["tenant_id"]
    assert parsed.get_data() == event["event_data"]
    assert from_http(HTTPMessage(headers, body), JSONFormat()).get_id() == event["id"]


def test_binary_is_a_cloudevent_the_sdk_reads_with_the_data_as_body() -> None:
    # Given values a header cannot carry as they are (non-ASCII, space, %, ")
    event = make_event(entity_id='Bestellung "übermorgen" 100%', event_type="état.changé")
    secret = new_secret()
    headers, body = payloads.build(event, "cloudevents-binary", [secret])
    verified(secret, headers, body)

    # Then every header is printable ASCII, and the body is event_data's JSON
    for value in headers.values():
        assert value.isascii() and value.isprintable()
    assert headers["ce-subject"] == "Bestellung%20%22%C3%BCbermorgen%22%20100%25"
    assert json.loads(body) == event["event_data"]
    assert headers["content-type"] == "application/json"

    parsed = from_binary(HTTPMessage(headers, body), JSONFormat())
    assert parsed.get_id() == event["id"]
    assert parsed.get_source() == "inventory"
    assert parsed.get_type() == "état.changé"
    assert parsed.get_subject() == 'Bestellung "übermorgen" 100%'
    assert parsed.get_time() == CREATED
    assert parsed.get_extension("targetmodule") == "warehouse"
    assert parsed.get_extension("entitytype") == "inventory_item"
    assert parsed.get_extension("tenantid") == event["tenant_id"]
    assert parsed.get_data() == event["event_data"]


@pytest.mark.parametrize("fmt", ["cloudevents-structured", "cloudevents-binary"])
def test_the_bus_reads_its_own_cloudevent_back_as_the_publish(fmt: str) -> None:
    # Given a delivery in a CloudEvents format
    event = make_event(entity_id="ünïcode id")
    headers, body = payloads.build(event, fmt, [new_secret()])

    # When the bus's CloudEvents reader (the publish side) reads it
    if fmt == "cloudevents-structured":
        received = read_structured(json.loads(body))
    else:
        received = read_binary(headers["content-type"], headers.items(), body)
    publish = parse_cloudevent(received, 1 << 20)

    # Then it is the publish the event came from
    assert publish.published() == {
        field: event[field]
        for field in (
            "event_type",
            "source_module",
            "target_module",
            "entity_type",
            "entity_id",
            "event_data",
        )
    }


def test_unknown_format_and_no_secret_are_refused() -> None:
    with pytest.raises(ValueError):
        payloads.build(make_event(), "xml", [new_secret()])
    with pytest.raises(ValueError):
        payloads.build(make_event(), "seed", [])


def test_percent_encode_leaves_plain_ascii_alone() -> None:
    assert payloads.percent_encode("inventory_updated/v1:x") == "inventory_updated/v1:x"
    assert payloads.percent_encode("a b") == "a%20b"
    assert payloads.percent_encode("\n") == "%0A"
    assert uuid.UUID(payloads.percent_encode(str(uuid.uuid4())))
