"""Response models: the seed's envelopes, for OpenAPI and for reading the routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, create_model

from bus.events import cloudevents
from bus.events.schemas import (
    EVENT_FIELDS,
    FILTER_PATTERN,
    IDENTIFIER_PATTERN,
    MAX_ERROR_MESSAGE,
    MAX_EVENT_DATA_DEPTH,
    MAX_STRING,
    MODULE_NAME_PATTERN,
    REQUIRED_FIELDS,
    STATUSES,
    TEXT_PATTERN,
    TIMESTAMP_PATTERN,
)
from bus.publish.replay import DEFAULT_MAX as REPLAY_DEFAULT_MAX
from bus.publish.replay import MAX_MAX as REPLAY_MAX
from bus.storage.attempt_store import SHOWN_ATTEMPTS, SHOWN_ERROR
from bus.storage.models import ENDPOINT_FORMATS
from bus.webhooks.endpoints import MAX_EVENT_TYPES
from bus.webhooks.signing import SECRET_PATTERN
from bus.webhooks.urls import MAX_URL_CHARS

_EVENT_FIELD_TYPES: dict[str, Any] = {
    "id": (str, Field(examples=["0b7a3c1e-8d0e-4f6c-9a55-2f1d3c4b5a69"])),
    "tenant_id": (str, ...),
    "event_type": (str, Field(examples=["inventory_updated"])),
    "source_module": (str, Field(examples=["inventory"])),
    "target_module": (str, Field(examples=["warehouse"])),
    "entity_type": (str, Field(examples=["inventory_item"])),
    "entity_id": (str, ...),
    "event_data": (dict[str, Any], ...),
    "status": (str, Field(examples=["pending"], json_schema_extra={"enum": list(STATUSES)})),
    "retry_count": (int, ...),
    "created_at": (str, Field(examples=["2023-04-01T10:00:00Z"])),
    "processed_at": (str | None, ...),
    "error_message": (str | None, ...),
}
# The seed's event object, its fields in bus.events.schemas.EVENT_FIELDS's order.
Event = create_model("Event", **{name: _EVENT_FIELD_TYPES[name] for name in EVENT_FIELDS})


class EventEnvelope(BaseModel):
    success: bool = True
    message: str = Field(examples=["Event published successfully"])
    event: Event


class EventsPage(BaseModel):
    success: bool = True
    message: str = Field(examples=["Events retrieved successfully"])
    events: list[Event]
    page: int | None = Field(description="the page asked for; null on a page read by cursor")
    limit: int
    total: int
    next_cursor: str | None = Field(
        description="`cursor` of the page after this one (same filters); null on the last page"
    )


class StatsCounts(BaseModel):
    pending: int
    processed: int
    failed: int = Field(description="every failed event, a retry to come or not")
    retry_scheduled: int = Field(description="failed events with an automatic retry to come")
    total: int


class ModuleStats(StatsCounts):
    target_module: str = Field(examples=["warehouse"])
    oldest_pending_age_seconds: float | None = Field(
        description="seconds since the oldest pending event was created; null when none is"
    )


class MinuteOutcomes(BaseModel):
    minute: str = Field(examples=["2023-04-01T10:00:00Z"], description="the minute's start")
    target_module: str = Field(examples=["warehouse"])
    processed: int = Field(description="handler runs that succeeded in that minute")
    failed: int = Field(description="handler runs that failed (or failures reported by PUT)")
    lost: int = Field(description="runs whose worker died (counted when the event came back)")


class EventStatsEnvelope(BaseModel):
    success: bool = True
    message: str = Field(examples=["Event stats retrieved successfully"])
    tenant_id: str | None = Field(description="the tenant counted; null: every tenant")
    generated_at: str = Field(examples=["2023-04-01T10:00:00Z"])
    totals: StatsCounts
    oldest_pending_age_seconds: float | None = Field(
        description="the oldest pending event's age over every module; null when none is"
    )
    modules: list[ModuleStats] = Field(description="one entry per target module, sorted")
    series: list[MinuteOutcomes] | None = Field(
        None,
        description="with `series=minute` only: the minutes of the last 60 (the current one "
        "last) that had a handler attempt, oldest first, one entry per minute and target module",
    )


class ErrorEnvelope(BaseModel):
    success: bool = False
    message: str = Field(examples=["Insufficient permissions"])


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error responses, each in the envelope."""
    described = {
        400: "Invalid input (`Field required <name>`, `Invalid <name>`, `Invalid status`, …)",
        401: "`Authentication required` or `Invalid token`",
        403: "`Insufficient permissions`",
        404: "`Event not found`",
        409: "`A request with this idempotency key is in progress`: retry later",
        413: "`Event data too large` or `Request body too large`",
        422: "`Idempotency key reused with a different request`: the `Idempotency-Key` was "
        "used within its TTL for another body or path (a retry sends the same request)",
        429: "`Too many concurrent requests`: the tenant's heavy calls (replays, batches, "
        "big pages) are at their cap; retry after `Retry-After` seconds",
        500: "`Internal server error`",
        503: "`Database unavailable: retry` (the database unreachable, or the connection broke "
        "mid-request) or `Server busy: retry` (no thread free within "
        "`EVENTBUS_API_WAIT_SECONDS`); retry after `Retry-After` seconds, with the same "
        "`Idempotency-Key` for a publish",
    }
    if 500 in codes:  # every route that can fail inside can also find its database gone
        codes = (*codes, 503)
    documented = {
        c: {"model": ErrorEnvelope, "description": described[c], **_example(_ONLY_MESSAGE.get(c))}
        for c in codes
    }
    for retryable in {429, 503} & documented.keys():
        documented[retryable]["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before trying again",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return documented


_ONLY_MESSAGE = {
    403: "Insufficient permissions",
    404: "Event not found",
    409: "A request with this idempotency key is in progress",
    422: "Idempotency key reused with a different request",
    429: "Too many concurrent requests",
    500: "Internal server error",
}
"""The codes that carry one message whatever the cause: the document shows it as the example
(a client or a fuzzer told a 422 is possible also sees which one)."""


def _example(message: str | None) -> dict[str, Any]:
    if message is None:
        return {}
    example = {"success": False, "message": message}
    return {"content": {"application/json": {"example": example}}}


# What bus/events/schemas.py accepts, from its own constants.
JSON_VALUE = "JsonValue"
_JSON_VALUE_REF = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
_JSON_OBJECT: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": TEXT_PATTERN},
    "additionalProperties": _JSON_VALUE_REF,
}
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "description": "Any JSON value whose strings and keys hold no U+0000 nor lone surrogate "
    "(PostgreSQL's jsonb cannot store them), with numbers within a double's range.",
    "anyOf": [
        {"type": "string", "pattern": TEXT_PATTERN},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": _JSON_VALUE_REF},
        _JSON_OBJECT,
    ],
}
"""Added to the document's components by api/app.py (a schema that names itself)."""
_IDENTIFIER: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_STRING,
    "pattern": IDENTIFIER_PATTERN,
    "description": f"at most {MAX_STRING} characters, not blank, no control character",
}
_MODULE: dict[str, Any] = {
    "type": "string",
    "pattern": MODULE_NAME_PATTERN,
    "description": "a module names its queue: `[a-z0-9_.-]{1,64}`",
}
_PUBLISH_PROPERTIES: dict[str, Any] = {
    "event_type": {**_IDENTIFIER, "example": "inventory_updated"},
    "source_module": {**_MODULE, "example": "inventory"},
    "target_module": {**_MODULE, "example": "warehouse"},
    "entity_type": {**_IDENTIFIER, "example": "inventory_item"},
    "entity_id": _IDENTIFIER,
    "event_data": {
        **_JSON_OBJECT,
        "description": f"any JSON object: {JSON_VALUE_SCHEMA['description']} At most "
        f"{MAX_EVENT_DATA_DEPTH} levels deep and `EVENTBUS_MAX_EVENT_DATA_BYTES` serialized "
        "(413 above). Numbers come back as PostgreSQL keeps them (`1e+20` is "
        "`100000000000000000000`, `-0.0` is `0.0`); the publish answers them that way already.",
    },
}
PUBLISH_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": list(REQUIRED_FIELDS),
    "properties": {name: _PUBLISH_PROPERTIES[name] for name in REQUIRED_FIELDS},
}


def _mapped(field: str) -> dict[str, Any]:
    """A CloudEvent attribute read into a publish field: that field's rules."""
    rules = _PUBLISH_PROPERTIES[field]
    said = f"the event's `{field}`"
    if "description" in rules:
        said = f"{said}: {rules['description']}"
    return {**rules, "description": said}


CLOUDEVENT_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One CloudEvent 1.0 (structured mode); other attributes are ignored.",
    "required": ["specversion", "id", *cloudevents.FIELD_ATTRIBUTES.values()],
    "properties": {
        "specversion": {"type": "string", "enum": [cloudevents.SPECVERSION]},
        "id": {
            **_IDENTIFIER,
            "description": "with `source`, names the event: the same pair again (per tenant, "
            "without an `Idempotency-Key`) is stored once",
        },
        **{name: _mapped(field) for field, name in cloudevents.FIELD_ATTRIBUTES.items()},
        "datacontenttype": {
            "type": "string",
            "pattern": cloudevents.DATA_CONTENT_TYPE_PATTERN,
            "description": "`application/json` (parameters allowed) when given",
        },
        "time": {
            "type": "string",
            "format": "date-time",
            "pattern": TIMESTAMP_PATTERN,
            "description": "RFC 3339 when given; not stored (`created_at` is when the bus "
            "stored the event)",
        },
    },
}


def _timestamp(description: str) -> dict[str, Any]:
    """An optional RFC 3339 timestamp (the rules of :data:`TIMESTAMP_PATTERN`)."""
    return {
        "type": ["string", "null"],
        "format": "date-time",
        "pattern": TIMESTAMP_PATTERN,
        "description": description,
    }


STATUS_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": list(STATUSES)},
        "processed_at": _timestamp(
            "RFC 3339 with a zone (`Z` or `±HH:MM`); default: now when processed"
        ),
        "error_message": {
            "type": ["string", "null"],
            "pattern": TEXT_PATTERN,
            "description": f"stored cut to {MAX_ERROR_MESSAGE} characters (the last `…`) "
            "when longer; no U+0000",
        },
    },
}


class EventsEnvelope(BaseModel):
    success: bool = True
    message: str = Field(examples=["Events published successfully"])
    events: list[Event] = Field(description="the stored events, in the order they were sent")


BATCH_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["events"],
    "properties": {
        "events": {
            "type": "array",
            "minItems": 1,
            "items": PUBLISH_BODY_SCHEMA,
            "description": "1 to `EVENTBUS_MAX_BATCH` publish bodies (1000 by default); all "
            "are stored or none",
        }
    },
}


class AttemptEntry(BaseModel):
    attempt: int = Field(description="the entry's number in the event's history, from 1")
    started_at: str | None = Field(
        examples=["2023-04-01T10:00:00Z"],
        description="when the handler began; null when the bus did not see it begin (a `lost` "
        "run, an outcome reported by `PUT`)",
    )
    finished_at: str = Field(
        examples=["2023-04-01T10:00:01Z"],
        description="when the outcome was recorded (for `lost`: when the next delivery "
        "counted the dead run)",
    )
    outcome: str = Field(json_schema_extra={"enum": ["processed", "failed", "lost"]})
    error_message: str | None
    worker: str | None = Field(
        examples=["worker-1/4242"],
        description="`hostname/pid` of the process that ran the handler or answered the `PUT`; "
        "null for a `lost` run",
    )
    source: str = Field(json_schema_extra={"enum": ["worker", "api"]})


class EventDetailEnvelope(BaseModel):
    success: bool = True
    message: str = Field(examples=["Event retrieved successfully"])
    event: Event
    attempts: list[AttemptEntry] = Field(
        description=f"the last {SHOWN_ATTEMPTS} entries of the event's attempt history, oldest "
        f"first, each `error_message` cut to {SHOWN_ERROR} characters (the last `…`)"
    )
    attempts_total: int = Field(
        description="entries in the history (since `EVENTBUS_ATTEMPTS_RETENTION_DAYS`): more "
        "than `attempts` holds when it is long"
    )
    next_attempt_at: str | None = Field(
        examples=["2023-04-01T10:00:30Z"],
        description="when the automatic retry of a failed event is due; null when none is "
        "(pending, processed, or failed for good)",
    )
    deliveries: list[Delivery] = Field(
        description="its outcome with each webhook endpoint it went to"
    )


class ReplayEnvelope(BaseModel):
    success: bool = True
    message: str = Field(examples=["Events replayed successfully", "Replay preview"])
    matched: int = Field(description="events the filters match (every one, not only `max`)")
    replayed: int = Field(
        description="events set pending and sent again: 0 for a dry run, at most `max`"
    )


def _replay_filter(description: str) -> dict[str, Any]:
    return {
        "type": ["string", "null"],
        "pattern": FILTER_PATTERN,
        "description": f"{description}; null or empty: no filter",
    }


REPLAY_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "status": {"type": ["string", "null"], "enum": [*STATUSES, "", None]},
        "event_type": _replay_filter("exact event type"),
        "source_module": _replay_filter("exact source module"),
        "target_module": _replay_filter("exact target module"),
        "entity_type": _replay_filter("exact entity type"),
        "retry_scheduled": {
            "type": ["boolean", "string", "null"],
            "enum": [True, False, "true", "false", "", None],
            "description": "true: failed events with a retry to come; false: every other "
            "(with status failed: the events that gave up)",
        },
        "created_after": _timestamp("RFC 3339: events created at or after it"),
        "created_before": _timestamp("RFC 3339: events created before it"),
        "dry_run": {
            "type": ["boolean", "null"],
            "default": False,
            "description": "count the matches, change nothing",
        },
        "max": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": REPLAY_MAX,
            "default": REPLAY_DEFAULT_MAX,
            "description": "replay at most this many (oldest first)",
        },
    },
}


class Endpoint(BaseModel):
    id: str = Field(examples=["5f0c8d1e-2b7a-4c3d-9e8f-1a2b3c4d5e6f"])
    tenant_id: str
    target_module: str = Field(examples=["warehouse"])
    url: str = Field(examples=["https://hooks.example.com/eventbus"])
    event_types: list[str] | None = Field(
        description="the event types it receives; null: every event type of `target_module`"
    )
    format: str = Field(json_schema_extra={"enum": list(ENDPOINT_FORMATS)})
    enabled: bool
    ordered: bool = Field(
        description="deliver an entity's events one at a time, in order: a failed event "
        "holds its entity's later events (only its own tenant's, of its module) while its "
        "retries are to come, and after the last one until an operator releases the key"
    )
    disabled_reason: str | None = Field(
        description="why the endpoint is disabled; null while enabled (enabling clears it)"
    )
    failing_since: str | None = Field(
        description="since when every delivery failed (null once one answers 2xx); the endpoint "
        "is disabled when that is `EVENTBUS_WEBHOOK_DISABLE_AFTER_SECONDS` ago"
    )
    previous_secret_expires_at: str | None = Field(
        description="while a rotated secret is still valid (deliveries then carry two "
        "signatures): when it expires; null otherwise"
    )
    created_at: str = Field(examples=["2023-04-01T10:00:00Z"])
    updated_at: str = Field(examples=["2023-04-01T10:00:00Z"])
    secret: str | None = Field(
        None,
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        description="the signing secret: in the answer of a create and of a rotation only",
    )


class EndpointEnvelope(BaseModel):
    success: bool = True
    message: str = Field(examples=["Endpoint created successfully"])
    endpoint: Endpoint


class Delivery(BaseModel):
    event_id: str
    endpoint_id: str
    status: str = Field(
        json_schema_extra={"enum": ["acknowledged", "failed", "waiting"]},
        description="`acknowledged`: answered 2xx (never sent again); `failed`: its last "
        "request failed; `waiting`: the endpoint is disabled",
    )
    requests: int = Field(description="requests sent in all")
    last_status_code: int | None = Field(description="null: no HTTP answer (or none sent)")
    last_error: str | None
    last_attempt_at: str | None
    acknowledged_at: str | None


class DeliveriesEnvelope(BaseModel):
    success: bool = True
    message: str = Field(examples=["Deliveries retrieved successfully"])
    deliveries: list[Delivery] = Field(description="newest first")


class EndpointsEnvelope(BaseModel):
    success: bool = True
    message: str = Field(examples=["Endpoints retrieved successfully"])
    endpoints: list[Endpoint] = Field(description="oldest first")


_ENDPOINT_URL: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_URL_CHARS,
    "example": "https://hooks.example.com/eventbus",
    "description": "`http` or `https`, no userinfo nor fragment; its host must not be (nor "
    "resolve to) a loopback, private, link-local, multicast, reserved or metadata address "
    "unless `EVENTBUS_WEBHOOK_ALLOW_NETWORKS` lists it (`400 URL not allowed`)",
}
_ENDPOINT_EVENT_TYPES: dict[str, Any] = {
    "type": ["array", "null"],
    "minItems": 1,
    "maxItems": MAX_EVENT_TYPES,
    "items": {**_IDENTIFIER, "example": "inventory_updated"},
    "description": "the event types it receives; null (the default): every one",
}
_ENDPOINT_CHANGES: dict[str, Any] = {
    "url": _ENDPOINT_URL,
    "event_types": _ENDPOINT_EVENT_TYPES,
    "format": {"type": "string", "enum": list(ENDPOINT_FORMATS), "default": "seed"},
    "enabled": {"type": "boolean", "default": True},
    "ordered": {"type": "boolean", "default": False},
}
ENDPOINT_CREATE_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["target_module", "url"],
    "additionalProperties": False,
    "properties": {
        "target_module": {**_MODULE, "example": "warehouse"},
        **_ENDPOINT_CHANGES,
        "secret": {
            "type": ["string", "null"],
            "pattern": SECRET_PATTERN,
            "description": "`whsec_` and the base64 of 24 to 64 bytes; null or absent: one is "
            "generated (24 random bytes)",
        },
    },
}
ENDPOINT_UPDATE_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        name: {k: v for k, v in schema.items() if k != "default"}
        for name, schema in _ENDPOINT_CHANGES.items()
    },
}
