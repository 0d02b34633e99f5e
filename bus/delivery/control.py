"""What operators do to delivery: pause and resume a module, list and release held keys.

A paused module's events wait in the in-flight set: no claim takes them, nothing is reserved
on the broker, and resuming sends one wake-up (nothing is sent again). A held key is an entity
whose events wait behind one that failed for good under an ordered handler that blocks on
failure (``@handler(..., ordered=True)``); releasing it lets the key move on, the failed event
staying failed (a ``PUT`` to ``pending``, or a replay, runs it again, first in its key).
Pausing is a system admin's (it stops every tenant's events); held keys are a tenant's.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bus.auth import Principal, acting_tenant, require_reader, require_writer
from bus.broker.dispatch import Dispatch
from bus.errors import BusError, EventNotFound, InsufficientPermissions, InvalidField
from bus.events.rules import utcnow
from bus.events.schemas import FILTER_PATTERN, MODULE_NAME, format_timestamp, parse_uuid
from bus.storage import claim_store
from bus.uow import UnitOfWork

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

FILTER = re.compile(FILTER_PATTERN)  # no control or bidi characters (NUL included)
MAX_REASON_CHARS = 255


class NotHeld(BusError):
    status_code = 409
    message = "Event holds no key"


def _module(name: str) -> str:
    """A module's name as a publish accepts it (``MODULE_NAME``), else 400."""
    if not MODULE_NAME.fullmatch(name):
        raise InvalidField("target_module")
    return name


def _admin(principal: Principal) -> None:
    if not principal.is_system_admin:
        raise InsufficientPermissions()


def pause(uow: UnitOfWork, principal: Principal, module: str, reason: str | None) -> dict[str, Any]:
    """Pause ``module`` (a system admin's call); pausing a paused module keeps its first pause."""
    _admin(principal)
    module = _module(module)
    if reason is not None and (
        not isinstance(reason, str)
        or len(reason) > MAX_REASON_CHARS
        or not FILTER.fullmatch(reason)
    ):
        raise InvalidField("reason")
    claim_store.pause(uow.session, module, utcnow(), reason)
    return module_state(uow.session, module)


def resume(uow: UnitOfWork, principal: Principal, module: str) -> dict[str, Any]:
    """Resume ``module`` and wake its workers (a system admin's call)."""
    _admin(principal)
    module = _module(module)
    if claim_store.resume(uow.session, module):
        hint = claim_store.ready_modules(uow.session, [module], utcnow()).get(module)
        if hint is not None:
            uow.send(Dispatch(hint, module))
    return module_state(uow.session, module)


def module_state(session: Session, module: str) -> dict[str, Any]:
    paused = claim_store.paused(session, [module]).get(module)
    return _state(module, paused)


def modules(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """Every module with events in flight or paused, with its pause."""
    require_reader(principal)
    paused = claim_store.paused(session)
    names = sorted(set(claim_store.modules_in_flight(session)) | set(paused))
    return [_state(m, paused.get(m)) for m in names]


def _state(module: str, paused: tuple[datetime, str | None] | None) -> dict[str, Any]:
    return {
        "target_module": module,
        "paused": paused is not None,
        "paused_at": format_timestamp(paused[0]) if paused else None,
        "reason": paused[1] if paused else None,
    }


MAX_HELD_KEYS = 100


def held_keys(
    session: Session,
    principal: Principal,
    tenant_param: str | None,
    module: str | None,
    limit: str | None = None,
) -> list[dict[str, Any]]:
    """The caller's held keys, oldest first (a system admin naming no tenant: every tenant's)."""
    require_reader(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    if module is not None:
        module = _module(module)
    most = MAX_HELD_KEYS
    if limit is not None:
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_HELD_KEYS:
            raise InvalidField("limit")
        most = int(limit)
    now = utcnow()
    return [
        {
            "tenant_id": str(k.tenant_id),
            "target_module": k.target_module,
            "entity_type": k.entity_type,
            "entity_id": k.entity_id,
            "event_id": str(k.event_id),
            "event_type": k.event_type,
            "held_since": format_timestamp(k.held_since),
            "age_seconds": round((now - k.held_since).total_seconds(), 3),
            "waiting": k.waiting,
        }
        for k in claim_store.held_keys(session, tenant_id, module, most)
    ]


def release(
    uow: UnitOfWork, principal: Principal, event_id: str, tenant_param: str | None
) -> dict[str, Any]:
    """Release the key held by failed event ``event_id``; its key's next event runs."""
    require_writer(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    try:
        uid = parse_uuid(event_id, "event_id")
    except BusError:
        raise EventNotFound() from None
    module = claim_store.release_key(uow.session, uid, tenant_id)
    if module is None:
        if not claim_store.in_flight(uow.session, uid, tenant_id):
            raise EventNotFound()
        raise NotHeld()
    uow.send(Dispatch(uid, module))
    return {"event_id": str(uid), "target_module": module}
