"""``/system/modules`` and ``/system/held-keys``: pause and resume a module's delivery, list the
entities whose events wait behind a failed one and release them. Thin routes over
:mod:`bus.delivery.control`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from api.deps import SystemReader, SystemWriter, WorkDep
from api.envelopes import errors
from api.params import HeldKeysQueryDep, TenantQuery
from bus.delivery import control

router = APIRouter(prefix="/system", tags=["Delivery control"])


@router.get("/modules", responses=errors(401, 403, 500), summary="List Modules")
async def list_modules(caller: SystemReader, work: WorkDep) -> Any:
    """Every module with events in flight or paused, and whether its delivery is paused."""
    found = await work.read(control.modules, caller)
    return {"success": True, "message": "Modules retrieved successfully", "modules": found}


@router.post(
    "/modules/{module}/pause", responses=errors(400, 401, 403, 500), summary="Pause Module"
)
async def pause_module(
    module: str,
    caller: SystemWriter,
    work: WorkDep,
    reason: Annotated[str | None, Body(embed=True)] = None,
) -> Any:
    """Stop delivering the module's events (a system admin's call): they wait, nothing is
    reserved on the broker or lost, and publishing goes on."""
    state = await work.run(control.pause, caller, module, reason)
    return {"success": True, "message": "Module paused successfully", "module": state}


@router.post(
    "/modules/{module}/resume", responses=errors(400, 401, 403, 500), summary="Resume Module"
)
async def resume_module(module: str, caller: SystemWriter, work: WorkDep) -> Any:
    """Deliver the module's events again (a system admin's call); nothing is sent again."""
    state = await work.run(control.resume, caller, module)
    return {"success": True, "message": "Module resumed successfully", "module": state}


@router.get("/held-keys", responses=errors(400, 401, 403, 500), summary="List Held Keys")
async def list_held_keys(caller: SystemReader, work: WorkDep, query: HeldKeysQueryDep) -> Any:
    """Entities whose events wait behind one that failed for good under an ordered handler
    that blocks on failure, oldest first: the failed event, since when, how many wait."""
    keys = await work.read(
        control.held_keys, caller, query.tenant_id, query.target_module, query.limit
    )
    return {"success": True, "message": "Held keys retrieved successfully", "held_keys": keys}


@router.post(
    "/held-keys/{event_id}/release",
    responses=errors(400, 401, 403, 404, 409, 500),
    summary="Release Held Key",
)
async def release_held_key(
    event_id: str,
    caller: SystemWriter,
    work: WorkDep,
    tenant_id: TenantQuery,
) -> Any:
    """Let the key held by this failed event move on; the event stays failed."""
    released = await work.run(control.release, caller, event_id, tenant_id)
    return {"success": True, "message": "Key released successfully", **released}
