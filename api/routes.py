"""``/system/events``: list, publish, update status. Each route calls one service function."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import (
    BatchJsonBody,
    BusDep,
    GroupCommitDep,
    JsonBody,
    SystemReader,
    SystemWriter,
    WorkDep,
)
from api.envelopes import (
    BATCH_BODY_SCHEMA,
    PUBLISH_BODY_SCHEMA,
    STATUS_BODY_SCHEMA,
    EventEnvelope,
    EventsEnvelope,
    EventsPage,
    EventStatsEnvelope,
    errors,
)
from api.params import ListQueryDep, ListTenant, TenantQuery
from bus import service
from bus.schemas import format_timestamp

router = APIRouter(prefix="/system/events", tags=["System Events"])


@router.get(
    "",
    response_model=EventsPage,
    responses=errors(400, 401, 403, 500),
    summary="List Events",
)
async def list_events(
    caller: SystemReader, work: WorkDep, bus: BusDep, tenant_id: ListTenant, query: ListQueryDep
) -> Any:
    """Events of the caller's tenant, newest first, filtered by exact matches (AND).

    Needs `manage:system` or a system admin; a system admin naming no tenant sees all tenants.
    A page whose body would pass `EVENTBUS_MAX_RESPONSE_BYTES` is cut: it answers a smaller
    `limit` (and the `page` of that limit where its first event sits); ask for `page + 1` with
    that `limit` to go on.
    """
    page = await work.read(service.list_events, bus.settings, caller, tenant_id, query)
    # Each event was encoded once, as it was read; response_model stays for the document.
    return Response(page.body(), media_type="application/json")


@router.get(
    "/stats",
    response_model=EventStatsEnvelope,
    responses=errors(400, 401, 403, 500),
    summary="Event Stats",
)
async def event_stats(caller: SystemReader, work: WorkDep, tenant_id: TenantQuery) -> Any:
    """What an operator checks first: the caller's events counted by target module and status,
    and how long the oldest pending event has waited.

    Same rights and tenancy as the list: `manage:system` or a system admin; a system admin
    naming no tenant counts every tenant. `failed` minus `retry_scheduled` is the events that
    gave up and need a person.
    """
    stats = await work.read(service.event_stats, caller, tenant_id)
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
    group: GroupCommitDep,
    tenant_id: TenantQuery,
) -> Any:
    """Store an event as pending and queue it for its target module's workers.

    Needs a system token, `manage:system` or a system admin. Answered once the event is
    committed; concurrent publishes share that commit (group commit).
    """
    event = service.prepare_publish(
        bus.settings, caller, tenant_id, body, request_id=request.state.request_id
    )
    view = await group.publish(event)
    # Built here, not re-validated against response_model (which stays for the document):
    # the service returns exactly the seed's event object.
    return JSONResponse(
        {"success": True, "message": "Event published successfully", "event": view},
        status_code=201,
    )


@router.post(
    "/batch",
    status_code=201,
    response_model=EventsEnvelope,
    responses=errors(400, 401, 403, 413, 500),
    summary="Publish Events",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BATCH_BODY_SCHEMA}},
        }
    },
)
async def publish_events(
    request: Request,
    caller: SystemWriter,
    body: BatchJsonBody,
    bus: BusDep,
    work: WorkDep,
    tenant_id: TenantQuery,
) -> Any:
    """Store up to `EVENTBUS_MAX_BATCH` events at once, all or nothing, in one INSERT and one
    commit; each is queued for its target module (one message per module).

    Same rights and tenant rules as a publish. An invalid item refuses the whole batch with
    `events[<index>]: <the publish's message>`.
    """
    events = service.prepare_batch(
        bus.settings, caller, tenant_id, body, request_id=request.state.request_id
    )
    views = await work.run(service.store_published, events)
    return JSONResponse(
        {"success": True, "message": "Events published successfully", "events": views},
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
    work: WorkDep,
    tenant_id: TenantQuery,
) -> Any:
    """Set an event's status: processed (processed_at defaults to now), failed (retry_count + 1)
    or pending (sent to its module again)."""
    event = await work.run(service.update_status, bus.settings, caller, event_id, tenant_id, body)
    return JSONResponse({"success": True, "message": "Event updated successfully", "event": event})
