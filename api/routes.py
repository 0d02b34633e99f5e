"""``/system/events``: list, publish, update status. Each route calls one service function."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.deps import BusDep, JsonBody, SystemReader, SystemWriter, Work
from api.envelopes import (
    PUBLISH_BODY_SCHEMA,
    STATUS_BODY_SCHEMA,
    EventEnvelope,
    EventsPage,
    EventStatsEnvelope,
    errors,
)
from bus import service
from bus.schemas import format_timestamp

router = APIRouter(prefix="/system/events", tags=["System Events"])

# The parameters stay strings so a bad value is the seed's 400 ``Invalid <name>`` (parsed in
# bus/schemas.py); these hints only make the document say which strings are accepted.
_TEXT = {"pattern": "^[^\\x00]*$"}  # PostgreSQL refuses a NUL in a query parameter

TenantParam = Annotated[
    str | None,
    Query(
        description="UUID of the tenant (optional for system admins and in auth context)",
        json_schema_extra={"format": "uuid"},
    ),
]


@router.get(
    "",
    response_model=EventsPage,
    responses=errors(400, 401, 403, 500),
    summary="List Events",
)
async def list_events(
    request: Request,
    caller: SystemReader,
    work: Work,
    tenant_id: TenantParam = None,
    event_type: Annotated[
        str | None, Query(description="exact event type", json_schema_extra=_TEXT)
    ] = None,
    source_module: Annotated[
        str | None, Query(description="exact source module", json_schema_extra=_TEXT)
    ] = None,
    target_module: Annotated[
        str | None, Query(description="exact target module", json_schema_extra=_TEXT)
    ] = None,
    status: Annotated[
        str | None,
        Query(
            description="pending, processed or failed",
            json_schema_extra={"enum": ["pending", "processed", "failed"]},
        ),
    ] = None,
    entity_type: Annotated[
        str | None, Query(description="exact entity type", json_schema_extra=_TEXT)
    ] = None,
    page: Annotated[
        str | None,
        Query(
            description="page number, from 1", json_schema_extra={"pattern": "^[1-9][0-9]{0,8}$"}
        ),
    ] = None,
    limit: Annotated[
        str | None,
        Query(
            description="items per page, 1 to 1000",
            json_schema_extra={"pattern": "^([1-9][0-9]{0,2}|1000)$"},
        ),
    ] = None,
) -> Any:
    """Events of the caller's tenant, newest first, filtered by exact matches (AND).

    Needs `manage:system` or a system admin; a system admin naming no tenant sees all tenants.
    """
    result = await work.run(service.list_events, caller, request.query_params)
    return {
        "success": True,
        "message": "Events retrieved successfully",
        "events": result.events,
        "page": result.page,
        "limit": result.limit,
        "total": result.total,
    }


@router.get(
    "/stats",
    response_model=EventStatsEnvelope,
    responses=errors(400, 401, 403, 500),
    summary="Event Stats",
)
async def event_stats(
    request: Request, caller: SystemReader, work: Work, tenant_id: TenantParam = None
) -> Any:
    """What an operator checks first: the caller's events counted by target module and status,
    and how long the oldest pending event has waited.

    Same rights and tenancy as the list: `manage:system` or a system admin; a system admin
    naming no tenant counts every tenant. `failed` minus `retry_scheduled` is the events that
    gave up and need a person.
    """
    stats = await work.run(service.event_stats, caller, request.query_params)
    return {
        "success": True,
        "message": "Event stats retrieved successfully",
        "tenant_id": str(stats.tenant_id) if stats.tenant_id else None,
        "generated_at": format_timestamp(stats.generated_at),
        "totals": stats.totals,
        "oldest_pending_age_seconds": stats.oldest_pending_age_seconds,
        "modules": stats.modules,
    }


@router.post(
    "",
    status_code=201,
    response_model=EventEnvelope,
    responses=errors(400, 401, 403, 413, 500),
    summary="Publish Event",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PUBLISH_BODY_SCHEMA}},
        }
    },
)
async def publish_event(
    request: Request,
    caller: SystemWriter,
    body: JsonBody,
    bus: BusDep,
    work: Work,
    tenant_id: TenantParam = None,
) -> Any:
    """Store an event as pending and queue it for its target module's workers.

    Needs a system token, `manage:system` or a system admin.
    """
    event = await work.run(
        service.publish, bus.settings, caller, tenant_id, body, request_id=request.state.request_id
    )
    # Built here, not re-validated against response_model (which stays for the document):
    # service.publish returns exactly the seed's event object.
    return JSONResponse(
        {"success": True, "message": "Event published successfully", "event": event},
        status_code=201,
    )


@router.put(
    "/{event_id}",
    response_model=EventEnvelope,
    responses=errors(400, 401, 403, 404, 413, 500),
    summary="Update Event Status",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": STATUS_BODY_SCHEMA}},
        }
    },
)
async def update_event_status(
    event_id: str,
    caller: SystemWriter,
    body: JsonBody,
    bus: BusDep,
    work: Work,
    tenant_id: TenantParam = None,
) -> Any:
    """Set an event's status: processed (processed_at defaults to now), failed (retry_count + 1)
    or pending (sent to its module again)."""
    event = await work.run(service.update_status, bus.settings, caller, event_id, tenant_id, body)
    return JSONResponse({"success": True, "message": "Event updated successfully", "event": event})
