"""CloudEvents 1.0 in: a publish written as a CloudEvent, in HTTP structured or binary mode.

``POST /system/events`` takes the seed's JSON body, or one CloudEvent: structured (the body is
the event, ``Content-Type: application/cloudevents+json``) or binary (the attributes in
``ce-*`` headers, the body the event's data). The API hands this module the request's plain
values (its ``Content-Type``, its headers, its body's bytes); :func:`read_publish` says which
of the three a request is, and :func:`parse_cloudevent` maps a CloudEvent onto the seed's
publish and checks it by the seed's rules (:func:`bus.events.schemas.parse_new_event`):

==================  ==================  ===============================================
CloudEvents         publish field       note
==================  ==================  ===============================================
``type``            ``event_type``
``source``          ``source_module``   a module name: ``[a-z0-9_.-]{1,64}``
``targetmodule``    ``target_module``   an extension attribute (``ce-targetmodule``)
``entitytype``      ``entity_type``     an extension attribute (``ce-entitytype``)
``subject``         ``entity_id``       with ``entity_type``, the per-entity order key
``data``            ``event_data``      a JSON object (``application/json``)
``id``              (none)              with ``source``, the publish's idempotency key
``time``            (none)              checked (RFC 3339), not stored
==================  ==================  ===============================================

A message names what the client sent: the CloudEvents attribute (``Field required subject``,
``Invalid source``), or for the two extensions the publish field they fill
(``Field required target_module``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from bus.errors import FieldRequired, InvalidField, InvalidJSONBody
from bus.events.schemas import (
    IDENTIFIER_PATTERN,
    MAX_STRING,
    NewEvent,
    is_text,
    parse_json_body,
    parse_new_event,
    parse_timestamp,
)

SPECVERSION = "1.0"
STRUCTURED_MEDIA_TYPE = "application/cloudevents+json"
"""The structured mode's ``Content-Type`` (a ``charset`` parameter is allowed)."""
DATA_CONTENT_TYPE_PATTERN = (
    "^[Aa][Pp][Pp][Ll][Ii][Cc][Aa][Tt][Ii][Oo][Nn]/[Jj][Ss][Oo][Nn][ \\t]*(;[\\x20-\\x7e]*)?$"
)
"""The one ``datacontenttype`` taken: ``application/json`` (any case), parameters allowed
(``; charset=utf-8``). Written for Python's ``re`` and JSON Schema alike (the OpenAPI document
says it)."""
HEADER_PREFIX = "ce-"
"""Binary mode: attribute ``<name>`` travels as header ``ce-<name>``, percent-encoded."""
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")
"""The attributes every CloudEvent has; one of them as a ``ce-`` header makes a request binary."""
TARGET_EXTENSION = "targetmodule"
ENTITY_TYPE_EXTENSION = "entitytype"

FIELD_ATTRIBUTES: Mapping[str, str] = {
    "event_type": "type",
    "source_module": "source",
    "target_module": TARGET_EXTENSION,
    "entity_type": ENTITY_TYPE_EXTENSION,
    "entity_id": "subject",
    "event_data": "data",
}
"""Each publish field (:data:`bus.events.fields.PUBLISHED`) and the attribute it is read from."""

_NAMED_AS_ATTRIBUTE = {"event_type", "source_module", "entity_id", "event_data"}
"""The fields whose messages name the CloudEvents attribute; the extensions' name the field."""
_DATA_CONTENT_TYPE = re.compile(DATA_CONTENT_TYPE_PATTERN)
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
"""A ``ce-`` header's value: printable ASCII, anything else percent-encoded (HTTP binding
3.1.3.2)."""


class Mode(StrEnum):
    """How a publish request is written."""

    SEED = "seed"
    STRUCTURED = "structured"
    BINARY = "binary"


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """A CloudEvent as received, before the bus's rules: its attributes by name, and its data
    (``None`` when it has none; bytes when it is not JSON: ``data_base64``, or a binary body
    of another type)."""

    attributes: Mapping[str, Any]
    data: Any = None


def media_type(content_type: str | None) -> str:
    """A ``Content-Type``'s type/subtype, lowercase, without its parameters (``""`` for none)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def mode(content_type: str | None, header_names: Iterable[str]) -> Mode:
    """Structured for ``application/cloudevents+json``; binary when a required attribute comes
    as a ``ce-`` header (``ce-specversion``, ``ce-id``, ``ce-source``, ``ce-type``); else the
    seed's JSON body, whatever its ``Content-Type`` (as before CloudEvents were taken)."""
    if media_type(content_type) == STRUCTURED_MEDIA_TYPE:
        return Mode.STRUCTURED
    required = {HEADER_PREFIX + name for name in REQUIRED_ATTRIBUTES}
    if any(name.lower() in required for name in header_names):
        return Mode.BINARY
    return Mode.SEED


def read_publish(content_type: str | None, headers: Iterable[tuple[str, str]], body: bytes) -> Any:
    """A publish request's body as the publish takes it: the seed's JSON body as parsed
    (:func:`bus.events.schemas.parse_json_body`), or a :class:`CloudEvent` (structured or
    binary, see :func:`mode`). ``headers``: the request's (name, value) pairs."""
    pairs = list(headers)
    found = mode(content_type, (name for name, _ in pairs))
    if found is Mode.SEED:
        return parse_json_body(body)
    if found is Mode.STRUCTURED:
        return read_structured(parse_json_body(body))
    return read_binary(content_type, pairs, body)


def read_structured(body: Any) -> CloudEvent:
    """A structured-mode body: one JSON object holding the attributes and ``data`` (or
    ``data_base64``: binary data, which no publish takes). A batch (an array) is not taken."""
    if not isinstance(body, dict):
        raise InvalidJSONBody()
    attributes = {k: v for k, v in body.items() if k not in ("data", "data_base64")}
    data = body.get("data")
    if data is None and body.get("data_base64") is not None:
        data = str(body["data_base64"]).encode()
    return CloudEvent(attributes, data)


def read_binary(
    content_type: str | None, headers: Iterable[tuple[str, str]], body: bytes
) -> CloudEvent:
    """A binary-mode request: each ``ce-<name>`` header is attribute ``<name>`` (percent-
    decoded; sent twice or not printable ASCII: ``Invalid <name>``), ``Content-Type`` is
    ``datacontenttype`` and the body the data: JSON when that type is ``application/json`` or
    absent, none when the body is empty."""
    attributes: dict[str, Any] = {}
    for header, value in headers:
        if not header.lower().startswith(HEADER_PREFIX):
            continue
        name = header.lower().removeprefix(HEADER_PREFIX)
        if name in attributes or not _HEADER_VALUE.fullmatch(value):
            raise InvalidField(name)
        try:
            attributes[name] = unquote(value, errors="strict")
        except UnicodeDecodeError as exc:
            raise InvalidField(name) from exc
    attributes.pop("datacontenttype", None)  # Content-Type says it in this mode
    attributes.pop("data", None)
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    data: Any = None
    if body:
        is_json = content_type is None or _DATA_CONTENT_TYPE.fullmatch(content_type) is not None
        data = parse_json_body(body) if is_json else body
    return CloudEvent(attributes, data)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_cloudevent(event: CloudEvent, max_data_bytes: int) -> NewEvent:
    """Check a CloudEvent and map it onto a publish (the table above), in this order:
    ``specversion`` (required, ``1.0``), ``id`` (required, an identifier as ``entity_id``
    is), ``datacontenttype`` (``application/json`` when given), ``time`` (RFC 3339 when
    given), then the publish's
    own rules in the seed's order on the mapped fields: ``type``, ``source``,
    ``target_module``, ``entity_type``, ``subject``, ``data`` required, then their formats,
    then the data (an object, storable, not too large). Other attributes are ignored."""
    attributes = event.attributes
    version = attributes.get("specversion")
    if _missing(version):
        raise FieldRequired("specversion")
    if version != SPECVERSION:
        raise InvalidField("specversion")
    event_id = attributes.get("id")
    if _missing(event_id):
        raise FieldRequired("id")
    if (
        not isinstance(event_id, str)
        or len(event_id) > MAX_STRING
        or not _IDENTIFIER.fullmatch(event_id)
        or not is_text(event_id)
    ):
        raise InvalidField("id")
    if "datacontenttype" in attributes:
        content_type = attributes["datacontenttype"]
        if not isinstance(content_type, str) or not _DATA_CONTENT_TYPE.fullmatch(content_type):
            raise InvalidField("datacontenttype")
    if "time" in attributes:
        parse_timestamp(attributes["time"], "time")
    body = {field: attributes.get(name) for field, name in FIELD_ATTRIBUTES.items()}
    body["event_data"] = event.data
    try:
        return parse_new_event(body, max_data_bytes)
    except FieldRequired as exc:
        raise FieldRequired(_named(exc.field)) from exc
    except InvalidField as exc:
        raise InvalidField(_named(exc.field)) from exc


def _named(field: str) -> str:
    return FIELD_ATTRIBUTES[field] if field in _NAMED_AS_ATTRIBUTE else field


def identity(event: CloudEvent) -> tuple[str, str]:
    """``(source, id)``: what names a CloudEvent (CloudEvents 1.0, "id"), read once
    :func:`parse_cloudevent` has accepted it."""
    source, event_id = event.attributes["source"], event.attributes["id"]
    assert isinstance(source, str) and isinstance(event_id, str)
    return source, event_id
