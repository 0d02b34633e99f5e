"""``/system/endpoints``: webhook endpoints, the HTTP receivers of a tenant's events of one
module (``eventbus worker`` delivers to them), and their deliveries. Thin routes over
:mod:`bus.webhooks.endpoints`, which holds the rules, rights and tenancy."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import BusDep, JsonBody, SystemReader, WorkDep
from api.envelopes import (
    ENDPOINT_CREATE_BODY_SCHEMA,
    ENDPOINT_UPDATE_BODY_SCHEMA,
    DeliveriesEnvelope,
    EndpointEnvelope,
    EndpointsEnvelope,
    errors,
)
from api.params import DeliveriesQueryDep, EndpointIdPath, EndpointsQueryDep, TenantQuery
from bus.webhooks import endpoints
from bus.webhooks.endpoints import EndpointNotFound

router = APIRouter(prefix="/system/endpoints", tags=["Webhook Endpoints"])

# Every route needs `manage:system` or a system admin (SystemReader): a system token may
# publish, but an endpoint reads a tenant's events, which a system token may not.


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """:func:`api.envelopes.errors`, a 404 being `Endpoint not found`."""
    documented = errors(*codes)
    if 404 in documented:
        message = EndpointNotFound.message
        documented[404] = {
            **documented[404],
            "description": f"`{message}`: no such endpoint in the tenant acted in",
            "content": {"application/json": {"example": {"success": False, "message": message}}},
        }
    return documented


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _answer(message: str, status_code: int = 200, **content: Any) -> JSONResponse:
    return JSONResponse({"success": True, "message": message, **content}, status_code=status_code)


@router.post(
    "",
    status_code=201,
    response_model=EndpointEnvelope,
    responses=_errors(400, 401, 403, 413, 500),
    summary="Create Endpoint",
    openapi_extra=_body(ENDPOINT_CREATE_BODY_SCHEMA),
)
async def create_endpoint(
    caller: SystemReader, body: JsonBody, work: WorkDep, runtime: BusDep, tenant_id: TenantQuery
) -> Any:
    """Register a webhook endpoint: `target_module`'s events of the tenant (of `event_types`
    only, when given) are to be delivered to `url`, signed as Standard Webhooks says, written
    as `format` says (`seed`, `cloudevents-structured`, `cloudevents-binary`).

    Needs `manage:system` or a system admin; the tenant is the token's, or for a system admin
    the `tenant_id` query (else the admin token's). Without `secret`, one is generated
    (`whsec_` and 24 random bytes in base64): the answer shows it, and no later one does (a
    rotation makes a new one). A URL that is, or resolves to, a loopback, private, link-local,
    multicast, reserved or metadata address is `400 URL not allowed`, unless
    `EVENTBUS_WEBHOOK_ALLOW_NETWORKS` lists it; a name that resolves to nothing is
    `400 URL host not found`. A field the call does not take is `400 Unknown body field`.
    A tenant has at most 100 endpoints (`400 Too many endpoints`).
    """
    endpoint = await work.run(endpoints.create, runtime.settings, caller, tenant_id, body)
    return _answer("Endpoint created successfully", 201, endpoint=endpoint)


@router.get(
    "",
    response_model=EndpointsEnvelope,
    responses=_errors(400, 401, 403, 500),
    summary="List Endpoints",
)
async def list_endpoints(caller: SystemReader, work: WorkDep, query: EndpointsQueryDep) -> Any:
    """The tenant's webhook endpoints, oldest first, of one `target_module` when asked (without
    their secrets). A system admin naming no tenant sees every tenant's."""
    found = await work.read(endpoints.list_endpoints, caller, query.tenant_id, query.target_module)
    return _answer("Endpoints retrieved successfully", endpoints=found)


@router.get(
    "/{endpoint_id}",
    response_model=EndpointEnvelope,
    responses=_errors(400, 401, 403, 404, 500),
    summary="Get Endpoint",
)
async def get_endpoint(
    endpoint_id: EndpointIdPath, caller: SystemReader, work: WorkDep, tenant_id: TenantQuery
) -> Any:
    """One webhook endpoint (without its secret). Another tenant's, or an id that is not a
    UUID, is `404 Endpoint not found`."""
    found = await work.read(endpoints.get_endpoint, caller, endpoint_id, tenant_id)
    return _answer("Endpoint retrieved successfully", endpoint=found)


@router.put(
    "/{endpoint_id}",
    response_model=EndpointEnvelope,
    responses=_errors(400, 401, 403, 404, 413, 500),
    summary="Update Endpoint",
    openapi_extra=_body(ENDPOINT_UPDATE_BODY_SCHEMA),
)
async def update_endpoint(
    endpoint_id: EndpointIdPath,
    caller: SystemReader,
    body: JsonBody,
    work: WorkDep,
    runtime: BusDep,
    tenant_id: TenantQuery,
) -> Any:
    """Change what the body names of `url`, `event_types` (null: every event type), `format`,
    `enabled`, `ordered`; the rest stays. Enabling clears `disabled_reason`; disabling sets it
    to `Disabled by an operator`. `target_module`, `secret` and the other fields shown are
    `400 Field cannot be updated <name>` (a new secret is a rotation); a new URL is checked as
    on a create."""
    endpoint = await work.run(
        endpoints.update, runtime.settings, caller, endpoint_id, tenant_id, body
    )
    return _answer("Endpoint updated successfully", endpoint=endpoint)


@router.delete(
    "/{endpoint_id}",
    response_model=EndpointEnvelope,
    responses=_errors(400, 401, 403, 404, 500),
    summary="Delete Endpoint",
)
async def delete_endpoint(
    endpoint_id: EndpointIdPath, caller: SystemReader, work: WorkDep, tenant_id: TenantQuery
) -> Any:
    """Delete a webhook endpoint; the answer is the endpoint as it was."""
    endpoint = await work.run(endpoints.delete, caller, endpoint_id, tenant_id)
    return _answer("Endpoint deleted successfully", endpoint=endpoint)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=EndpointEnvelope,
    responses=_errors(400, 401, 403, 404, 500),
    summary="Rotate Endpoint Secret",
)
async def rotate_endpoint_secret(
    endpoint_id: EndpointIdPath,
    caller: SystemReader,
    work: WorkDep,
    runtime: BusDep,
    tenant_id: TenantQuery,
) -> Any:
    """Make a new signing secret, shown in this answer only. The one it replaces stays valid
    for `EVENTBUS_WEBHOOK_SECRET_OVERLAP_SECONDS` (a day by default;
    `previous_secret_expires_at` says until when): deliveries meanwhile carry a signature with
    each, so a receiver can move to the new secret without missing one. A second rotation
    within that time drops the older secret."""
    endpoint = await work.run(
        endpoints.rotate_secret, runtime.settings, caller, endpoint_id, tenant_id
    )
    return _answer("Secret rotated successfully", endpoint=endpoint)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=DeliveriesEnvelope,
    responses=_errors(400, 401, 403, 404, 500),
    summary="List Endpoint Deliveries",
)
async def list_endpoint_deliveries(
    endpoint_id: EndpointIdPath, caller: SystemReader, work: WorkDep, query: DeliveriesQueryDep
) -> Any:
    """The endpoint's latest deliveries, newest first (`status=failed`: its last failures;
    `waiting`: the events waiting for it while it is disabled)."""
    found = await work.read(
        endpoints.list_deliveries, caller, endpoint_id, query.tenant_id, query.status, query.limit
    )
    return _answer("Deliveries retrieved successfully", deliveries=found)
