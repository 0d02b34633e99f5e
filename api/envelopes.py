"""Response models: the seed's envelopes, for OpenAPI and for reading the routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Event(BaseModel):
    id: str = Field(examples=["0b7a3c1e-8d0e-4f6c-9a55-2f1d3c4b5a69"])
    tenant_id: str
    event_type: str = Field(examples=["inventory_updated"])
    source_module: str = Field(examples=["inventory"])
    target_module: str = Field(examples=["warehouse"])
    entity_type: str = Field(examples=["inventory_item"])
    entity_id: str
    event_data: dict[str, Any]
    status: str = Field(examples=["pending"])
    retry_count: int
    created_at: str = Field(examples=["2023-04-01T10:00:00Z"])
    processed_at: str | None
    error_message: str | None


class EventEnvelope(BaseModel):
    success: bool = True
    message: str = Field(examples=["Event published successfully"])
    event: Event


class EventsPage(BaseModel):
    success: bool = True
    message: str = Field(examples=["Events retrieved successfully"])
    events: list[Event]
    page: int
    limit: int
    total: int


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
        413: "`Event data too large` or `Request body too large`",
        500: "`Internal server error`",
    }
    return {c: {"model": ErrorEnvelope, "description": described[c]} for c in codes}


# What bus/schemas.py accepts: "" counts as missing, and PostgreSQL cannot store a NUL.
_NO_NUL = "^[^\\x00]*$"
_TEXT_FIELD: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": _NO_NUL,
}
PUBLISH_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "event_type",
        "source_module",
        "target_module",
        "entity_type",
        "entity_id",
        "event_data",
    ],
    "properties": {
        "event_type": {**_TEXT_FIELD, "example": "inventory_updated"},
        "source_module": {"type": "string", "pattern": "^[a-z0-9_.-]{1,64}$"},
        "target_module": {"type": "string", "pattern": "^[a-z0-9_.-]{1,64}$"},
        "entity_type": _TEXT_FIELD,
        "entity_id": _TEXT_FIELD,
        "event_data": {"type": "object", "additionalProperties": True},
    },
}

STATUS_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["pending", "processed", "failed"]},
        "processed_at": {"type": ["string", "null"], "format": "date-time"},
        "error_message": {"type": ["string", "null"], "maxLength": 10000, "pattern": _NO_NUL},
    },
}
