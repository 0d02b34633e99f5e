"""Webhook endpoints: what a body may say, who may see and change an endpoint, and its secrets.

An endpoint receives a tenant's events of one ``target_module`` (of ``event_types`` only, when
given) at ``url``, written as ``format`` says, while ``enabled``. Its rights and tenancy are the
events': ``manage:system`` or a system admin (a system token, which may publish but not list
events, may not make an endpoint either: an endpoint reads events); anyone but a system admin
acts in its token's tenant, and a system admin naming no tenant reads or changes any tenant's.
An endpoint of another tenant is ``Endpoint not found``, as one that does not exist.

A body's fields are checked in order, with the seed's messages (``Field required <name>``,
``Invalid <name>``); a field the call does not take is ``Unknown body field`` (a typo'd
``enabeld: false`` must not leave an endpoint receiving events), and one that an update cannot
change is ``Field cannot be updated <name>``. The URL is checked last (``bus.webhooks.urls``:
it may resolve a name), before any SQL.

The secret is shown twice only: in the answer of the create, and of a rotation. A rotation keeps
the previous secret valid for ``EVENTBUS_WEBHOOK_SECRET_OVERLAP_SECONDS``, so deliveries carry
a signature with each (:func:`signing_secrets`) while receivers move to the new one; a second
rotation within that time drops the older one.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bus.auth import Principal, acting_tenant, require_reader
from bus.errors import BusError, FieldRequired, InvalidField, InvalidJSONBody, UnknownBodyField
from bus.events.rules import utcnow
from bus.events.schemas import (
    IDENTIFIER_PATTERN,
    MAX_STRING,
    MODULE_NAME,
    format_timestamp,
    is_text,
    parse_uuid,
)
from bus.settings import Settings
from bus.storage import delivery_store, endpoint_store
from bus.storage.endpoint_store import EndpointRow, StoredSecret
from bus.storage.models import ENDPOINT_FORMATS, DeliveryStatus, EndpointFormat
from bus.uow import UnitOfWork
from bus.webhooks import delivery, signing
from bus.webhooks.urls import UrlPolicy
from bus.webhooks.views import delivery_view

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

CREATE_FIELDS = ("target_module", "url", "event_types", "format", "enabled", "ordered", "secret")
"""What a create body may hold, in the order it is checked; ``target_module`` and ``url`` are
required."""
UPDATE_FIELDS = ("url", "event_types", "format", "enabled", "ordered")
"""What an update body may change (each optional)."""
SHOWN_ONLY = (
    "id",
    "tenant_id",
    "target_module",
    "secret",
    "disabled_reason",
    "previous_secret_expires_at",
    "created_at",
    "updated_at",
)
"""Fields of an endpoint an update cannot change: ``Field cannot be updated <name>`` (a new
module is a new endpoint; a new secret is a rotation)."""

MAX_EVENT_TYPES = 100
MAX_ENDPOINTS_PER_TENANT = 100
"""Endpoints a tenant may have: each is a delivery of every matching event, and the list is
answered whole."""
DISABLED_BY_OPERATOR = "Disabled by an operator"
"""``disabled_reason`` of an endpoint a ``PUT`` disabled (the delivery step will give its own
reasons: a 410, failing for too long)."""

_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


class EndpointNotFound(BusError):
    status_code = 404
    message = "Endpoint not found"


class TooManyEndpoints(BusError):
    message = "Too many endpoints"


class FieldNotUpdatable(BusError):
    def __init__(self, field: str) -> None:
        super().__init__(f"Field cannot be updated {field}")


# --- bodies ----------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    """Absent, null, or a blank string: ``Field required``."""
    return value is None or (isinstance(value, str) and not value.strip())


def _module(value: Any) -> str:
    if not isinstance(value, str) or not MODULE_NAME.fullmatch(value):
        raise InvalidField("target_module")
    return value


def _event_types(value: Any) -> list[str] | None:
    """Null (every event type of the module) or 1 to ``MAX_EVENT_TYPES`` event types, each as
    a publish takes it; a repeat is kept once."""
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EVENT_TYPES:
        raise InvalidField("event_types")
    for item in value:
        if (
            not isinstance(item, str)
            or len(item) > MAX_STRING
            or not _IDENTIFIER.fullmatch(item)
            or not is_text(item)
        ):
            raise InvalidField("event_types")
    return list(dict.fromkeys(value))


def _format(value: Any) -> str:
    if value not in ENDPOINT_FORMATS:
        raise InvalidField("format")
    return str(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidField(name)
    return value


def _secret(value: Any) -> str:
    """A given secret, as :func:`bus.webhooks.signing.secret_key` takes it; a new one for null."""
    if value is None:
        return signing.new_secret()
    try:
        signing.secret_key(value)
    except ValueError:
        raise InvalidField("secret") from None
    return str(value)


def _object(body: Any, fields: tuple[str, ...], fixed: tuple[str, ...] = ()) -> dict[str, Any]:
    """``body`` if it is an object naming only ``fields``; a name of ``fixed`` is
    ``Field cannot be updated <name>``, any other ``Unknown body field``."""
    if not isinstance(body, dict):
        raise InvalidJSONBody()
    for name in body:
        if name not in fields:
            raise FieldNotUpdatable(name) if name in fixed else UnknownBodyField()
    return body


def parse_new_endpoint(body: Any, policy: UrlPolicy) -> dict[str, Any]:
    """A create body's values by column (``secrets`` among them), or the first error."""
    body = _object(body, CREATE_FIELDS)
    for name in ("target_module", "url"):
        if _missing(body.get(name)):
            raise FieldRequired(name)
    values = {
        "target_module": _module(body["target_module"]),
        "event_types": _event_types(body.get("event_types")),
        "format": _format(body.get("format", EndpointFormat.SEED.value)),
        "enabled": _flag(body.get("enabled", True), "enabled"),
        "ordered": _flag(body.get("ordered", False), "ordered"),
        "secrets": (StoredSecret(_secret(body.get("secret")), None),),
    }
    values["url"] = policy.check_url(body["url"])
    return values


def parse_changes(body: Any, policy: UrlPolicy) -> dict[str, Any]:
    """An update body's values by column, only those it names (``event_types`` null: every
    event type again), or the first error."""
    body = _object(body, UPDATE_FIELDS, SHOWN_ONLY)
    changes: dict[str, Any] = {}
    if "event_types" in body:
        changes["event_types"] = _event_types(body["event_types"])
    if "format" in body:
        changes["format"] = _format(body["format"])
    for name in ("enabled", "ordered"):
        if name in body:
            changes[name] = _flag(body[name], name)
    if "url" in body:
        if _missing(body["url"]):
            raise InvalidField("url")
        changes["url"] = policy.check_url(body["url"])
    return changes


# --- the calls -------------------------------------------------------------------------------


def _endpoint_uuid(endpoint_id: str) -> uuid.UUID:
    """A path's id; one that is no canonical UUID names no endpoint (404, as an unknown one)."""
    try:
        return parse_uuid(endpoint_id, "id")
    except InvalidField:
        raise EndpointNotFound() from None


def signing_secrets(row: EndpointRow, now: datetime) -> list[str]:
    """The secrets a delivery at ``now`` is signed with: the current one first, then a previous
    one until it expires."""
    return [s.secret for s in row.secrets if s.expires_at is None or s.expires_at > now]


def _live(secrets: tuple[StoredSecret, ...], now: datetime) -> tuple[StoredSecret, ...]:
    return tuple(s for s in secrets if s.expires_at is None or s.expires_at > now)


def endpoint_view(row: EndpointRow, now: datetime, secret: str | None = None) -> dict[str, Any]:
    """An endpoint as the API shows it; ``secret`` only in a create's or a rotation's answer."""
    expiries = [s.expires_at for s in _live(row.secrets, now) if s.expires_at is not None]
    view: dict[str, Any] = {
        "id": str(row.id),
        "tenant_id": str(row.tenant_id),
        "target_module": row.target_module,
        "url": row.url,
        "event_types": row.event_types,
        "format": row.format,
        "enabled": row.enabled,
        "ordered": row.ordered,
        "disabled_reason": row.disabled_reason,
        "failing_since": format_timestamp(row.failing_since),
        "previous_secret_expires_at": format_timestamp(max(expiries)) if expiries else None,
        "created_at": format_timestamp(row.created_at),
        "updated_at": format_timestamp(row.updated_at),
    }
    if secret is not None:
        view["secret"] = secret
    return view


def create(
    uow: UnitOfWork, settings: Settings, principal: Principal, tenant_param: str | None, body: Any
) -> dict[str, Any]:
    """Store a new endpoint in the caller's tenant; its view with its secret."""
    require_reader(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=True)
    assert tenant_id is not None  # creating: the query's, else the token's, else 400
    values = parse_new_endpoint(body, UrlPolicy.from_settings(settings))
    if endpoint_store.count(uow.session, tenant_id) >= MAX_ENDPOINTS_PER_TENANT:
        raise TooManyEndpoints()
    now = utcnow()
    row = EndpointRow(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        disabled_reason=None,
        created_at=now,
        updated_at=now,
        **values,
    )
    endpoint_store.insert(uow.session, row)
    return endpoint_view(row, now, secret=row.secrets[0].secret)


def list_endpoints(
    session: Session, principal: Principal, tenant_param: str | None, target_module: str | None
) -> list[dict[str, Any]]:
    """The caller's endpoints (a system admin naming no tenant: every tenant's), of one module
    when asked, oldest first."""
    require_reader(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    module = _module(target_module) if target_module is not None else None
    now = utcnow()
    return [
        endpoint_view(r, now) for r in endpoint_store.list_endpoints(session, tenant_id, module)
    ]


def get_endpoint(
    session: Session, principal: Principal, endpoint_id: str, tenant_param: str | None
) -> dict[str, Any]:
    """One endpoint of the caller's tenant."""
    require_reader(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    row = endpoint_store.get(session, _endpoint_uuid(endpoint_id), tenant_id)
    if row is None:
        raise EndpointNotFound()
    return endpoint_view(row, utcnow())


DELIVERIES_SHOWN = 20
_SHOWN = re.compile("[1-9][0-9]?|100")
"""A deliveries ``limit``: 1 to 100, written without a leading zero (as the document says)."""


def list_deliveries(
    session: Session,
    principal: Principal,
    endpoint_id: str,
    tenant_param: str | None,
    status: str | None,
    limit: str | None,
) -> list[dict[str, Any]]:
    """The endpoint's latest deliveries (of ``status`` when given), newest first."""
    require_reader(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    if status is not None and status not in {s.value for s in DeliveryStatus}:
        raise InvalidField("status")
    shown = DELIVERIES_SHOWN
    if limit is not None:
        if not _SHOWN.fullmatch(limit):
            raise InvalidField("limit")
        shown = int(limit)
    row = endpoint_store.get(session, _endpoint_uuid(endpoint_id), tenant_id)
    if row is None:
        raise EndpointNotFound()
    return [delivery_view(d) for d in delivery_store.of_endpoint(session, row.id, status, shown)]


def _locked(
    uow: UnitOfWork, principal: Principal, endpoint_id: str, tenant_param: str | None
) -> EndpointRow:
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    row = endpoint_store.get(uow.session, _endpoint_uuid(endpoint_id), tenant_id, for_update=True)
    if row is None:
        raise EndpointNotFound()
    return row


def update(
    uow: UnitOfWork,
    settings: Settings,
    principal: Principal,
    endpoint_id: str,
    tenant_param: str | None,
    body: Any,
) -> dict[str, Any]:
    """Change what the body names; enabling clears ``disabled_reason``, disabling sets it to
    :data:`DISABLED_BY_OPERATOR` (a reason the bus gave is kept). Nothing changed: nothing is
    written (``updated_at`` stays)."""
    require_reader(principal)
    changes = parse_changes(body, UrlPolicy.from_settings(settings))
    row = _locked(uow, principal, endpoint_id, tenant_param)
    now = utcnow()
    if changes.get("enabled") is True:
        changes["disabled_reason"] = None
        changes["failing_since"] = None  # a fresh start: the disabling clock begins again
    elif changes.get("enabled") is False and row.enabled:
        changes["disabled_reason"] = DISABLED_BY_OPERATOR
    changed = {k: v for k, v in changes.items() if getattr(row, k) != v}
    if not changed:
        return endpoint_view(row, now)
    new = replace(row, **changed, secrets=_live(row.secrets, now), updated_at=now)
    endpoint_store.save(uow.session, new)
    if new.enabled and not row.enabled:
        delivery.resume(uow, row.id)
    return endpoint_view(new, now)


def delete(
    uow: UnitOfWork, principal: Principal, endpoint_id: str, tenant_param: str | None
) -> dict[str, Any]:
    """Delete the endpoint; its view as it was."""
    require_reader(principal)
    row = _locked(uow, principal, endpoint_id, tenant_param)
    endpoint_store.delete_endpoint(uow.session, row.id, row.tenant_id)
    return endpoint_view(row, utcnow())


def rotate_secret(
    uow: UnitOfWork,
    settings: Settings,
    principal: Principal,
    endpoint_id: str,
    tenant_param: str | None,
) -> dict[str, Any]:
    """A new secret for the endpoint, the current one valid
    ``EVENTBUS_WEBHOOK_SECRET_OVERLAP_SECONDS`` more (not at all when 0); the view with the
    new secret."""
    require_reader(principal)
    row = _locked(uow, principal, endpoint_id, tenant_param)
    now = utcnow()
    secret = signing.new_secret()
    overlap = timedelta(seconds=settings.webhook_secret_overlap_seconds)
    kept = (StoredSecret(row.secrets[0].secret, now + overlap),) if overlap else ()
    new = replace(row, secrets=(StoredSecret(secret, None), *kept), updated_at=now)
    endpoint_store.save(uow.session, new)
    return endpoint_view(new, now, secret=secret)
