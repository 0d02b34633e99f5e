"""Input parsing with the seed's exact messages, and the seed's output shape."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bus.errors import (
    EventDataNotObject,
    EventDataTooLarge,
    FieldRequired,
    InvalidField,
    InvalidJSONBody,
    InvalidStatus,
)
from bus.models import EventStatus, SystemEvent

REQUIRED_FIELDS = (
    "event_type",
    "source_module",
    "target_module",
    "entity_type",
    "entity_id",
    "event_data",
)
STRING_FIELDS = REQUIRED_FIELDS[:-1]
MODULE_FIELDS = ("source_module", "target_module")
MODULE_NAME = re.compile(r"[a-z0-9_.\-]{1,64}")
MAX_STRING = 255
MAX_ERROR_MESSAGE = 10_000
MAX_EVENT_DATA_DEPTH = 64
"""Objects and arrays nested deeper are refused: the response serializer stops at ~250 levels."""
MAX_PAGE_LIMIT = 1000
DEFAULT_PAGE_LIMIT = 100
LIST_FILTERS = ("event_type", "source_module", "target_module", "status", "entity_type")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def parse_json_body(raw: bytes) -> Any:
    """Decode a request body; NaN/Infinity, bad UTF-8 and runaway nesting are not JSON."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJSONBody() from exc


def format_timestamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z``, as the seed shows."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_timestamp(value: Any, field: str) -> datetime:
    """ISO 8601 text to an aware UTC datetime; a time without zone is taken as UTC."""
    if not isinstance(value, str) or not value:
        raise InvalidField(field)
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise InvalidField(field) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise InvalidField(field) from exc


def parse_uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError) as exc:
        raise InvalidField(field) from exc


def is_text(value: str) -> bool:
    """True if PostgreSQL can store it: no NUL, and UTF-8 encodable.

    JSON lets a lone surrogate (``"\\ud800"``) through; the driver cannot encode one.
    """
    if "\x00" in value:
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


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated publish request."""

    event_type: str
    source_module: str
    target_module: str
    entity_type: str
    entity_id: str
    event_data: dict[str, Any]


def parse_new_event(body: Any, max_data_bytes: int) -> NewEvent:
    """Check a publish body in the seed's order; fields a publisher may not set are ignored."""
    if not isinstance(body, dict):
        raise InvalidJSONBody()
    for name in REQUIRED_FIELDS:
        if body.get(name) is None or body.get(name) == "":
            raise FieldRequired(name)
    for name in STRING_FIELDS:
        value = body[name]
        if not isinstance(value, str) or len(value) > MAX_STRING or not is_text(value):
            raise InvalidField(name)
        if name in MODULE_FIELDS and not MODULE_NAME.fullmatch(value):
            raise InvalidField(name)
    data = body["event_data"]
    if not isinstance(data, dict):
        raise EventDataNotObject()
    if not _storable(data):
        raise InvalidField("event_data")
    size = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
    if size > max_data_bytes:
        raise EventDataTooLarge()
    return NewEvent(
        event_type=body["event_type"],
        source_module=body["source_module"],
        target_module=body["target_module"],
        entity_type=body["entity_type"],
        entity_id=body["entity_id"],
        event_data=data,
    )


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


def parse_status_change(body: Any) -> StatusChange:
    """Check a ``PUT`` body: status required and one of three; processed_at ISO 8601."""
    if not isinstance(body, dict):
        raise InvalidJSONBody()
    if body.get("status") is None or body.get("status") == "":
        raise FieldRequired("status")
    status = parse_status(body["status"])
    processed_at = None
    if body.get("processed_at") is not None:
        processed_at = parse_timestamp(body["processed_at"], "processed_at")
    error_message = body.get("error_message")
    if error_message is not None and (
        not isinstance(error_message, str)
        or len(error_message) > MAX_ERROR_MESSAGE
        or not is_text(error_message)
    ):
        raise InvalidField("error_message")
    return StatusChange(status=status, processed_at=processed_at, error_message=error_message)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A validated ``GET /system/events`` query: exact-match filters, AND-ed."""

    filters: Mapping[str, str]
    page: int = 1
    limit: int = DEFAULT_PAGE_LIMIT

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


def _positive_int(raw: str | None, default: int, upper: int, field: str) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise InvalidField(field)
    value = int(raw)
    if not 1 <= value <= upper:
        raise InvalidField(field)
    return value


def parse_list_query(params: Mapping[str, str]) -> ListQuery:
    """Empty filter values mean no filter, as in the seed's curl."""
    page = _positive_int(params.get("page"), 1, 10**9, "page")
    limit = _positive_int(params.get("limit"), DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, "limit")
    filters = {name: params[name] for name in LIST_FILTERS if params.get(name)}
    if "status" in filters:
        parse_status(filters["status"])
    for name, value in filters.items():
        if not is_text(value):  # PostgreSQL refuses a NUL in a query parameter
            raise InvalidField(name)
    return ListQuery(filters=filters, page=page, limit=limit)


def event_view(event: SystemEvent) -> dict[str, Any]:
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
