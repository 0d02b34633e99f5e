"""What one webhook delivery sends: its headers and body, from the event and the endpoint's format.

Pure functions: the worker builds a delivery here and hands the bytes to the sender, so the
bytes signed are exactly the bytes sent. Three formats (:class:`bus.storage.models.EndpointFormat`):

``seed``                    the body is the seed's event object (one element of the list's
                            ``events``), for receivers written against the REST API.
``cloudevents-structured``  the body is a CloudEvent 1.0 in JSON
                            (``application/cloudevents+json``).
``cloudevents-binary``      the body is ``event_data``; the attributes travel as ``ce-*``
                            headers, percent-encoded (HTTP binding 3.1.3.2).

The CloudEvents mapping is the reverse of :mod:`bus.events.cloudevents` (CloudEvents in), with
the same extension names, plus the tenant: ``type`` = event_type, ``source`` = source_module,
``subject`` = entity_id, ``time`` = created_at, ``data`` = event_data, ``targetmodule``,
``entitytype``, ``tenantid``. A receiver that publishes what it got back to the bus maps it
the same way.

Every delivery carries the Standard Webhooks headers (:func:`bus.webhooks.signing.headers`,
``webhook-id`` = the event's id: the same for every attempt, so a receiver drops a repeat).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bus.events.cloudevents import (
    ENTITY_TYPE_EXTENSION,
    HEADER_PREFIX,
    SPECVERSION,
    STRUCTURED_MEDIA_TYPE,
    TARGET_EXTENSION,
)
from bus.events.schemas import encode
from bus.storage.models import EndpointFormat
from bus.webhooks import signing

TENANT_EXTENSION = "tenantid"
"""The tenant's id as a CloudEvents extension (lowercase letters and digits, as the spec asks)."""
USER_AGENT = "eventbus-webhooks/1"
JSON = "application/json"

_ATTRIBUTES = (
    ("id", "id"),
    ("source", "source_module"),
    ("type", "event_type"),
    ("subject", "entity_id"),
    ("time", "created_at"),
    (TARGET_EXTENSION, "target_module"),
    (ENTITY_TYPE_EXTENSION, "entity_type"),
    (TENANT_EXTENSION, "tenant_id"),
)
"""CloudEvents attribute ← the seed's field, in the order they are written."""

_KEPT = frozenset(range(0x21, 0x7F)) - {0x22, 0x25}
"""Bytes a ``ce-*`` header carries as they are: printable ASCII but space, ``"`` and ``%``."""


def build(
    event: Mapping[str, Any],
    fmt: str,
    secrets: Sequence[str],
    *,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """``(headers, body)`` of one delivery of ``event`` (the seed's event object:
    :func:`bus.events.schemas.event_view`) in format ``fmt``, signed with each of ``secrets``
    (the current one first) at ``timestamp`` (now by default). Header names are lowercase.
    ValueError for an unknown format or no secret."""
    form = EndpointFormat(fmt)
    if form is EndpointFormat.SEED:
        headers = {"content-type": JSON}
        body = encode(dict(event))
    elif form is EndpointFormat.CLOUDEVENTS_STRUCTURED:
        headers = {"content-type": f"{STRUCTURED_MEDIA_TYPE}; charset=utf-8"}
        body = encode(structured(event))
    else:
        headers = {
            HEADER_PREFIX + name: percent_encode(str(value))
            for name, value in attributes(event).items()
        }
        headers["content-type"] = JSON
        body = encode(event["event_data"])
    headers.update(signing.headers(str(event["id"]), body, secrets, timestamp))
    headers["user-agent"] = USER_AGENT
    return headers, body


def attributes(event: Mapping[str, Any]) -> dict[str, Any]:
    """The CloudEvent's context attributes (no ``data``, no ``datacontenttype``); a field the
    event has no value for (``None``) is left out."""
    found: dict[str, Any] = {"specversion": SPECVERSION}
    for name, field in _ATTRIBUTES:
        value = event.get(field)
        if value is not None:
            found[name] = str(value)
    return found


def structured(event: Mapping[str, Any]) -> dict[str, Any]:
    """The structured mode's JSON object: the attributes, ``datacontenttype``, ``data``."""
    return {**attributes(event), "datacontenttype": JSON, "data": event["event_data"]}


def percent_encode(value: str) -> str:
    """A ``ce-*`` header's value: UTF-8, each byte outside printable ASCII, and space, ``"``
    and ``%``, as ``%XX`` (CloudEvents HTTP binding 3.1.3.2); what
    :func:`bus.events.cloudevents.read_binary` decodes."""
    raw = value.encode()
    if all(b in _KEPT for b in raw):
        return value
    return "".join(chr(b) if b in _KEPT else f"%{b:02X}" for b in raw)
