"""``/system/events``: the seed's list, publish and status update, and the bus's own batch
publish, stats, event detail and replay. Each route declares its caller and inputs through
dependencies and calls one function of ``bus`` (a publish goes through the API's group commit,
``api.publishing``); heavy calls (replay, batch, big pages) are admitted by ``api.limits``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.cloudevents import REQUEST_BODY as PUBLISH_REQUEST_BODY
from api.cloudevents import PublishBody
from api.deps import (
    BusDep,
    GroupCommitDep,
    JsonBody,
    SystemReader,
    SystemWriter,
    WorkDep,
    declared_length,
    read_batch_body,
)
from api.envelopes import (
    BATCH_BODY_SCHEMA,
    REPLAY_BODY_SCHEMA,
    STATUS_BODY_SCHEMA,
    EventDetailEnvelope,
    EventEnvelope,
    EventsEnvelope,
    EventsPage,
    EventStatsEnvelope,
    ReplayEnvelope,
    errors,
)
from api.idempotency import PARAMETER as IDEMPOTENCY_KEY_PARAMETER
from api.idempotency import REPLAYED_HEADER, IdempotencyKey, answer, fingerprint, render
from api.limits import parse_batch_body
from api.params import EventIdPath, ListQueryDep, ListTenant, StatsQueryDep, TenantQuery
from bus.delivery import status
from bus.events.schemas import format_timestamp
from bus.publish import replay, service
from bus.read import detail, listing, stats

router = APIRouter(prefix="/system/events", tags=["System Events"])


@router.get(
    "",
    response_model=EventsPage,
    responses=errors(400, 401, 403, 429, 500),
    summary="List Events",
)
async def list_events(
    caller: SystemReader, work: WorkDep, runtime: BusDep, tenant_id: ListTenant, query: ListQueryDep
) -> Any:
    """Events of the caller's tenant, newest first, filtered by exact matches (AND).

    Needs `manage:system` or a system admin; a system admin naming no tenant sees all tenants.
    A page whose body would pass `EVENTBUS_MAX_RESPONSE_BYTES` is cut: it answers a smaller
    `limit` (and the `page` of that limit where its first event sits); ask for `page + 1` with
    that `limit` to go on.

    A page whose `limit` is above `EVENTBUS_HEAVY_PAGE_LIMIT` (100) is a heavy call: a tenant
    may have `EVENTBUS_HEAVY_CALLS_PER_TENANT` of them in flight at once; one more is `429 Too
    many concurrent requests` with `Retry-After`.

    Every page carries `next_cursor`, null on the last one: `cursor=<it>` (with the same
    filters, without `page`) reads the page after it by keyset, so a walk by cursor returns
    each event once while new ones arrive. A page read by cursor answers `page` null.
    """
    async with work.heavy(caller, when=query.limit > runtime.settings.heavy_page_limit) as pages:
        page = await pages.read(listing.list_events, runtime.settings, caller, tenant_id, query)
    # Each event was encoded once, as it was read; response_model stays for the document.
    return Response(page.body(), media_type="application/json")


@router.get(
    "/stats",
    response_model=EventStatsEnvelope,
    response_model_exclude_unset=True,  # `series` only when asked for
    responses=errors(400, 401, 403, 500),
    summary="Event Stats",
)
async def event_stats(caller: SystemReader, work: WorkDep, query: StatsQueryDep) -> Any:
    """What an operator checks first: the caller's events counted by target module and status,
    and how long the oldest pending event has waited.

    Same rights and tenancy as the list: `manage:system` or a system admin; a system admin
    naming no tenant counts every tenant. `failed` minus `retry_scheduled` is the events that
    gave up and need a person. `series=minute` adds what the handlers did minute by minute over
    the last hour (read from buckets a trigger keeps, not from the attempts).
    """
    report = await work.read(stats.event_stats, caller, query.tenant_id, query.series)
    body = {
        "success": True,
        "message": "Event stats retrieved successfully",
        "tenant_id": str(report.tenant_id) if report.tenant_id else None,
        "generated_at": format_timestamp(report.generated_at),
        "totals": report.totals,
        "oldest_pending_age_seconds": report.oldest_pending_age_seconds,
        "modules": report.modules,
    }
    if report.series is not None:
        body["series"] = report.series
    return body


@router.post(
    "",
    status_code=201,
    response_model=EventEnvelope,
    responses={201: {"headers": REPLAYED_HEADER}, **errors(400, 401, 403, 409, 413, 422, 500)},
    summary="Publish Event",
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_PARAMETER], "requestBody": PUBLISH_REQUEST_BODY},
)
async def publish_event(
    request: Request,
    caller: SystemWriter,
    key: IdempotencyKey,
    body: PublishBody,
    work: WorkDep,
    runtime: BusDep,
    group: GroupCommitDep,
    tenant_id: TenantQuery,
) -> Any:
    """Store an event as pending and queue it for its target module's workers.

    Needs a system token, `manage:system` or a system admin. Answered once the event is
    committed; concurrent publishes share that commit (group commit). With an
    `Idempotency-Key`, it is stored once per key and tenant: a retry is answered the first
    response (`Idempotent-Replayed: true`), another body with the key is a 422, a retry while
    the first is in flight a 409.

    **CloudEvents 1.0.** The body may also be one CloudEvent, in structured mode
    (`Content-Type: application/cloudevents+json`, charset allowed) or binary mode (headers
    `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-subject`, `ce-targetmodule`,
    `ce-entitytype`, optional `ce-time`, percent-encoded; the body is the data, its
    `Content-Type` `application/json` or none). Mapped onto the seed's fields: `type` →
    `event_type`, `source` → `source_module`, extension `targetmodule` → `target_module`,
    extension `entitytype` → `entity_type`, `subject` → `entity_id` (with `entity_type`, the
    key of per-entity order), `data` → `event_data` (a JSON object); `time` is checked (RFC
    3339) and not stored, other attributes are ignored. Checked in the order `specversion`
    (else `400 Field required specversion`, not `1.0`: `400 Invalid specversion`), `id`,
    `datacontenttype` (not JSON: `400 Invalid datacontenttype`), `time`, `type`, `source`,
    `target_module`, `entity_type`, `subject`, `data` (`400 Field required <name>` /
    `Invalid <name>`, named as sent; a data that is no JSON object: `400 Event data must be
    object`). Without an `Idempotency-Key`, `source` + `id` are the key: the same event sent
    again is answered the first response, another with the same `source` + `id` is the 422.
    The answer, rights, tenancy and body cap are a JSON publish's.
    """
    event = service.prepare_publish(
        runtime.settings, caller, tenant_id, body, request_id=request.state.request_id
    )
    key = service.publish_key(key, body)
    if key is not None:  # its own unit of work: the key's row commits with the event
        envelope = {"success": True, "message": "Event published successfully"}
        return answer(
            await work.run(
                service.publish_once,
                runtime.settings,
                key,
                fingerprint(request, [event]),
                [event],
                lambda views: render({**envelope, "event": views[0]}),
            )
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
    responses={
        201: {"headers": REPLAYED_HEADER},
        **errors(400, 401, 403, 409, 413, 422, 429, 500),
    },
    summary="Publish Events",
    openapi_extra={
        "parameters": [IDEMPOTENCY_KEY_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BATCH_BODY_SCHEMA}},
        },
    },
)
async def publish_events(
    request: Request,
    caller: SystemWriter,
    key: IdempotencyKey,
    runtime: BusDep,
    work: WorkDep,
    tenant_id: TenantQuery,
) -> Any:
    """Store up to `EVENTBUS_MAX_BATCH` events at once, all or nothing, in one INSERT and one
    commit; each is queued for its target module (one message per module).

    Same rights and tenant rules as a publish. An invalid item refuses the whole batch with
    `events[<index>]: <the publish's message>`. An `Idempotency-Key` works as on a publish.
    A body of more than `EVENTBUS_MAX_BATCH_JSON_VALUES` keys and values is `413`. A body above
    `EVENTBUS_HEAVY_BATCH_BYTES` is a heavy call, as a replay is (`429 Too many concurrent
    requests` beyond the caps); a smaller one runs as a publish does.
    """
    big = declared_length(request) > runtime.settings.heavy_batch_bytes
    # read once admitted, parsed off the event loop either way
    async with work.heavy(caller, when=big) as heavy:
        raw = await read_batch_body(request)
        body = await heavy.call(parse_batch_body, raw, runtime.settings.max_batch_json_values)
        events = await heavy.call(
            service.prepare_batch,
            runtime.settings,
            caller,
            tenant_id,
            body,
            request_id=request.state.request_id,
        )
        if key is not None:
            envelope = {"success": True, "message": "Events published successfully"}
            return answer(
                await heavy.run(
                    service.publish_once,
                    runtime.settings,
                    key,
                    await heavy.call(fingerprint, request, events, batch=True),
                    events,
                    lambda views: render({**envelope, "events": views}),
                )
            )
        views = await heavy.run(service.store_published, events)
        envelope = {"success": True, "message": "Events published successfully"}
        content = await heavy.call(render, {**envelope, "events": views})  # up to 16 MiB
    return Response(content, status_code=201, media_type="application/json")


@router.post(
    "/replay",
    response_model=ReplayEnvelope,
    responses=errors(400, 401, 403, 413, 429, 500),
    summary="Replay Events",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": REPLAY_BODY_SCHEMA}},
        }
    },
)
async def replay_events(
    caller: SystemWriter, body: JsonBody, runtime: BusDep, work: WorkDep, tenant_id: TenantQuery
) -> Any:
    """Set every event the filters match pending again and send it to its module: the
    `PUT … pending` rule, oldest first, in batches of `EVENTBUS_DISPATCH_BATCH_SIZE` (each
    committed on its own, one message per module), at most `max` (default 10000).

    Same rights and tenancy as a `PUT` (a system admin naming no tenant replays every
    tenant's). `dry_run: true` changes nothing and answers `Replay preview` with the count.
    An unknown body field is `Unknown body field`: a typo'd filter never widens a replay.

    A replay is a heavy call: a tenant may have `EVENTBUS_HEAVY_CALLS_PER_TENANT` heavy calls
    (replays, batches, pages above `EVENTBUS_HEAVY_PAGE_LIMIT`) in flight at once; one more is
    `429 Too many concurrent requests`, with `Retry-After`.
    """
    async with work.heavy(caller) as heavy:
        result = await heavy.batches(replay.replay, runtime.settings, caller, tenant_id, body)
    message = "Replay preview" if result.dry_run else "Events replayed successfully"
    return JSONResponse(
        {
            "success": True,
            "message": message,
            "matched": result.matched,
            "replayed": result.replayed,
        }
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
    event_id: EventIdPath,
    caller: SystemWriter,
    body: JsonBody,
    runtime: BusDep,
    work: WorkDep,
    tenant_id: TenantQuery,
) -> Any:
    """Set an event's status: processed (processed_at defaults to now), failed (retry_count + 1)
    or pending (sent to its module again)."""
    event = await work.run(
        status.update_status, runtime.settings, caller, event_id, tenant_id, body
    )
    return JSONResponse({"success": True, "message": "Event updated successfully", "event": event})


@router.get(
    "/{event_id}",
    response_model=EventDetailEnvelope,
    responses=errors(400, 401, 403, 404, 500),
    summary="Get Event",
)
async def get_event(
    event_id: EventIdPath, caller: SystemReader, work: WorkDep, tenant_id: TenantQuery
) -> Any:
    """One event and its attempt history, oldest first: each handler run a worker recorded
    (`processed`, `failed`, or `lost` for a run whose process died) and each status change a
    `PUT` made (`source: "api"`). A long history shows its last entries, each error cut;
    `attempts_total` counts them all. `deliveries`: its outcome with each webhook endpoint
    it went to (`acknowledged`, `failed`, or `waiting` for a disabled endpoint).

    Same rights and tenancy as the list: `manage:system` or a system admin; a system admin
    naming no tenant reads any tenant's event. An id that is not a UUID, or an event of another
    tenant, is `404 Event not found`.
    """
    found = await work.read(detail.event_detail, caller, event_id, tenant_id)
    return JSONResponse(
        {
            "success": True,
            "message": "Event retrieved successfully",
            "event": found.event,
            "attempts": found.attempts,
            "attempts_total": found.attempts_total,
            "next_attempt_at": found.next_attempt_at,
            "deliveries": found.deliveries,
        }
    )
