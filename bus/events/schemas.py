"""Input parsing with the seed's exact messages, and the seed's output shape.

Every input rule is written here once, as data (field order, limits, patterns, the status set
in :class:`~bus.storage.models.EventStatus`); ``api/envelopes.py`` builds the OpenAPI document from
the
same constants, so the document says exactly what these functions accept.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from bus.errors import (
    DuplicateKey,
    EventDataNotObject,
    EventDataTooLarge,
    EventNotFound,
    FieldRequired,
    InvalidCursor,
    InvalidField,
    InvalidJSONBody,
    InvalidStatus,
)
from bus.events import fields
from bus.storage.models import EventRow, EventStatus, SystemEvent

EVENT_FIELDS = fields.SEED
"""The seed's event object, in its order."""
REQUIRED_FIELDS = fields.PUBLISHED
"""What a publish must carry, in the order the first missing one is named."""
STRING_FIELDS = fields.TEXT
MODULE_FIELDS = ("source_module", "target_module")
MAX_STRING = 255
MAX_ERROR_MESSAGE = 10_000
"""Characters of error_message kept; a longer one is stored cut, ending in ``…``."""
MAX_EVENT_DATA_DEPTH = 64
"""Objects and arrays nested deeper are refused: the response serializer stops at ~250 levels."""
MAX_PAGE = 10**9
MAX_PAGE_LIMIT = 1000
DEFAULT_PAGE_LIMIT = 100
LIST_FILTERS = (
    "event_type",
    "source_module",
    "target_module",
    "status",
    "entity_type",
    "retry_scheduled",
)
LIST_PARAMS = ("tenant_id", *LIST_FILTERS, "page", "limit", "cursor")
"""The list's query parameters, in the seed's order, then the retry filter and the cursor."""
RETRY_SCHEDULED = "retry_scheduled"
"""Not a column: ``true`` is a failed event with an automatic retry to come, ``false`` every
other (with ``status=failed``: the events that gave up and need a person)."""
RETRY_SCHEDULED_VALUES = ("true", "false")
SERIES = ("minute",)
"""What the stats' ``series`` may ask for."""
STATUSES = tuple(s.value for s in EventStatus)

# Patterns are written in the subset Python's ``re`` and ECMA-262 (JSON Schema) read alike.
_CONTROL = "\\x00-\\x1f\\x7f"
"""C0 controls and DEL: a CR, LF or ESC in an identifier would forge lines in text logs."""
_BIDI = "\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069"
"""Bidirectional controls (marks, embeddings, overrides, isolates): after U+202E an identifier
shows reversed in /ui and in a terminal (``invoice`` U+202E ``fdp.exe`` reads
``invoiceexe.pdf``)."""
_SPACE = " \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
"""What ``str.strip`` removes, C0 controls aside (tests/unit/test_schemas.py checks it)."""
MODULE_NAME_PATTERN = "^[a-z0-9_.\\-]{1,64}$"
"""A module names a queue: lowercase ASCII, digits, ``_.-``."""
IDENTIFIER_PATTERN = f"^[^{_CONTROL}{_BIDI}]*[^{_CONTROL}{_BIDI}{_SPACE}][^{_CONTROL}{_BIDI}]*$"
"""event_type, entity_type, entity_id: no control character (bidirectional ones included), not
blank."""
FILTER_PATTERN = f"^[^{_CONTROL}{_BIDI}]*$"
"""A list filter: what an identifier may hold; empty means no filter."""
TEXT_PATTERN = "^[^\\x00]*$"
"""Free text (error_message): anything PostgreSQL can store, newlines included.

No pattern says "no lone surrogate" (JSON can spell one, UTF-8 cannot encode it; generators
of JSON Schema never make one): :func:`is_text` refuses them on top of each pattern."""
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
OPTIONAL_UUID_PATTERN = UUID_PATTERN.replace("^", "^(", 1).replace("$", ")?$")
"""A tenant_id parameter: a UUID in its canonical form, or empty for none."""
PAGE_PATTERN = "^([1-9][0-9]{0,8})?$"
LIMIT_PATTERN = "^([1-9][0-9]{0,2}|1000)?$"
TIMESTAMP_PATTERN = (
    "^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    "[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(\\.[0-9]+)?"
    "([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""RFC 3339 ``date-time``: ``YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)``, no leap second."""

MODULE_NAME = re.compile(MODULE_NAME_PATTERN)
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_FILTER = re.compile(FILTER_PATTERN)
_TEXT = re.compile(TEXT_PATTERN)
_UUID = re.compile(UUID_PATTERN)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _number(text: str) -> float | int:
    """A JSON number with a fraction or an exponent, as it will come back from PostgreSQL.

    The row stores ``json.dumps`` of the value; jsonb keeps that text's exact decimal and writes
    it without an exponent, so ``1e+308`` comes back as a 309-digit integer and ``-0.0`` as
    ``0.0``. Reading the body that way makes the publish answer what the list returns later.
    """
    value = float(text)
    if not math.isfinite(value):
        return value  # beyond a double: refused as event_data
    stored = Decimal(repr(value))  # the text json.dumps writes
    if stored.as_tuple().exponent >= 0:  # type: ignore[operator]
        return int(stored)
    return 0.0 if value == 0 else value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, unless it names a key twice: parsers disagree on which one counts (first,
    last, an error), so a proxy or a signature check may read the value this API would not."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise DuplicateKey()
    return value


def parse_json_body(raw: bytes) -> Any:
    """Decode a request body; NaN/Infinity, bad UTF-8 and runaway nesting are not JSON, and an
    object naming a key twice is refused (``DuplicateKey``)."""
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_constant=_reject_constant,
            parse_float=_number,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJSONBody() from exc


def format_timestamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z``, as the seed shows."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_timestamp(value: Any, field: str) -> datetime:
    """RFC 3339 text (see ``TIMESTAMP_PATTERN``) to an aware UTC datetime; fractions beyond
    microseconds are cut. Anything else, or an instant outside years 1..9999 in UTC, is
    ``Invalid <field>``."""
    match = _TIMESTAMP.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidField(field)
    year, month, day, hour, minute, second, fraction, zone = match.group(1, 2, 3, 4, 5, 6, 7, 8)
    micros = int((fraction or ".")[1:7].ljust(6, "0"))
    offset = timedelta(0)
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        parsed = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros,
            tzinfo=timezone(offset),
        )  # fmt: skip
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # 2023-02-30, or past year 1..9999 in UTC
        raise InvalidField(field) from exc


def parse_uuid(value: str, field: str) -> uuid.UUID:
    """A UUID in its canonical 8-4-4-4-12 form (any case), else ``Invalid <field>``."""
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise InvalidField(field)
    return uuid.UUID(value)


def is_text(value: str) -> bool:
    """True if PostgreSQL can store it: no NUL, and UTF-8 encodable (no lone surrogate)."""
    if _TEXT.fullmatch(value) is None:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _storable(value: Any) -> bool:
    """True if jsonb can hold it and the API can send it back: text only as :func:`is_text`,
    finite numbers, and no deeper than ``MAX_EVENT_DATA_DEPTH``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not is_text(item):
                return False
        elif isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict | list):
            if depth > MAX_EVENT_DATA_DEPTH:
                return False
            if isinstance(item, dict):
                for key, child in item.items():
                    if not is_text(key):
                        return False
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
    return True


def _missing(value: Any) -> bool:
    """Absent, null, empty, or (for a string) only whitespace: ``Field required``."""
    return value is None or (isinstance(value, str) and not value.strip())


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated publish request."""

    event_type: str
    source_module: str
    target_module: str
    entity_type: str
    entity_id: str
    event_data: dict[str, Any]

    def published(self) -> dict[str, Any]:
        """The fields by name (:data:`bus.events.fields.PUBLISHED`)."""
        return {name: getattr(self, name) for name in fields.PUBLISHED}


def parse_new_event(body: Any, max_data_bytes: int) -> NewEvent:
    """Check a publish body in the seed's order; fields a publisher may not set are ignored."""
    if not isinstance(body, dict):
        raise InvalidJSONBody()
    for name in REQUIRED_FIELDS:
        if _missing(body.get(name)):
            raise FieldRequired(name)
    for name in STRING_FIELDS:
        value = body[name]
        rule = MODULE_NAME if name in MODULE_FIELDS else _IDENTIFIER
        if (
            not isinstance(value, str)
            or len(value) > MAX_STRING
            or not rule.fullmatch(value)
            or not is_text(value)
        ):
            raise InvalidField(name)
    data = body["event_data"]
    if not isinstance(data, dict):
        raise EventDataNotObject()
    if not _storable(data):
        raise InvalidField("event_data")
    if encoded_size(data) > max_data_bytes:
        raise EventDataTooLarge()
    return NewEvent(
        event_type=body["event_type"],
        source_module=body["source_module"],
        target_module=body["target_module"],
        entity_type=body["entity_type"],
        entity_id=body["entity_id"],
        event_data=data,
    )


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON, as responses are written (``EVENTBUS_MAX_*_BYTES`` count these)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def encoded_size(value: Any) -> int:
    return len(encode(value))


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A validated status update (from ``PUT`` or from a worker)."""

    status: EventStatus
    processed_at: datetime | None = None
    error_message: str | None = None


def parse_status(value: Any) -> EventStatus:
    try:
        return EventStatus(value)
    except (ValueError, TypeError) as exc:
        raise InvalidStatus() from exc


def truncate_error_message(text: str) -> str:
    """At most ``MAX_ERROR_MESSAGE`` characters, the last one ``…`` when cut: a processor
    reporting a long traceback keeps its failure."""
    if len(text) <= MAX_ERROR_MESSAGE:
        return text
    return text[: MAX_ERROR_MESSAGE - 1] + "…"


def parse_status_change(body: Any) -> StatusChange:
    """Check a ``PUT`` body: status required and one of three; processed_at RFC 3339."""
    if not isinstance(body, dict):
        raise InvalidJSONBody()
    if _missing(body.get("status")):
        raise FieldRequired("status")
    status = parse_status(body["status"])
    processed_at = None
    if body.get("processed_at") is not None:
        processed_at = parse_timestamp(body["processed_at"], "processed_at")
    error_message = body.get("error_message")
    if error_message is not None:
        if not isinstance(error_message, str) or not is_text(error_message):
            raise InvalidField("error_message")
        error_message = truncate_error_message(error_message)
    return StatusChange(status=status, processed_at=processed_at, error_message=error_message)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A validated ``GET /system/events`` query: exact-match filters, AND-ed."""

    filters: Mapping[str, str]
    page: int = 1
    limit: int = DEFAULT_PAGE_LIMIT
    cursor: str = ""
    """A ``next_cursor`` as given (checked against the tenant and filters by ``bus.read.cursors``);
    empty: the page is ``page``'s."""

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


def _positive_int(raw: str | None, default: int, pattern: str, field: str) -> int:
    if raw is None or raw == "":
        return default
    if not re.fullmatch(pattern, raw):
        raise InvalidField(field)
    return int(raw)


def parse_list_query(params: Mapping[str, str | None]) -> ListQuery:
    """Empty filter values mean no filter, as in the seed's curl. A cursor walks on from a
    page: ``page`` beside it is ``Invalid cursor``."""
    cursor = params.get("cursor") or ""
    if cursor and params.get("page"):
        raise InvalidCursor()
    page = _positive_int(params.get("page"), 1, PAGE_PATTERN, "page")
    limit = _positive_int(params.get("limit"), DEFAULT_PAGE_LIMIT, LIMIT_PATTERN, "limit")
    filters = {name: value for name in LIST_FILTERS if (value := params.get(name))}
    if "status" in filters:
        parse_status(filters["status"])
    if filters.get(RETRY_SCHEDULED, "true") not in RETRY_SCHEDULED_VALUES:
        raise InvalidField(RETRY_SCHEDULED)
    for name, value in filters.items():
        if not _FILTER.fullmatch(value) or not is_text(value):  # no identifier holds one
            raise InvalidField(name)
    return ListQuery(filters=filters, page=page, limit=limit, cursor=cursor)


def event_view(event: SystemEvent | EventRow) -> dict[str, Any]:
    """The seed's event object: exactly its fields, in its order."""
    return {
        "id": str(event.id),
        "tenant_id": str(event.tenant_id),
        "event_type": event.event_type,
        "source_module": event.source_module,
        "target_module": event.target_module,
        "entity_type": event.entity_type,
        "entity_id": event.entity_id,
        "event_data": event.event_data,
        "status": event.status,
        "retry_count": event.retry_count,
        "created_at": format_timestamp(event.created_at),
        "processed_at": format_timestamp(event.processed_at),
        "error_message": event.error_message,
    }


def event_uuid(event_id: str) -> uuid.UUID:
    """The id of a path: one that is no UUID in its canonical 8-4-4-4-12 form (any case) names
    no event (404, as an unknown one). ``uuid.UUID`` alone would also take ``urn:uuid:…``,
    ``{…}`` and 32 bare hex digits: several spellings of one event, which a cache or a WAF
    rule keyed on the path would count apart."""
    try:
        return parse_uuid(event_id, "event_id")
    except InvalidField as exc:
        raise EventNotFound() from exc
