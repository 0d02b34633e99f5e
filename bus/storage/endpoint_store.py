"""Webhook endpoints: the SQL of ``webhook_endpoints`` (the rules are ``bus.webhooks.endpoints``).

Every read and change names the tenant it acts in, or ``None`` for every tenant (a system admin
naming none): an endpoint of another tenant is never found, so it is never read nor changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, delete, func, select, true, update

from bus.storage.models import webhook_endpoints

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_table: Table = webhook_endpoints


@dataclass(frozen=True, slots=True)
class StoredSecret:
    """A signing secret (``whsec_…``); ``expires_at`` None: the current one."""

    secret: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class EndpointRow:
    """One row of ``webhook_endpoints``; ``secrets`` newest first."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    target_module: str
    url: str
    event_types: list[str] | None
    format: str
    enabled: bool
    ordered: bool
    secrets: tuple[StoredSecret, ...]
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    failing_since: datetime | None = None
    """Since when every delivery failed (None: the last one answered 2xx, or none yet)."""


def _encode_secrets(secrets: Sequence[StoredSecret]) -> list[dict[str, Any]]:
    """The JSON the column holds: expiries as ISO 8601 text in UTC (JSON has no time type)."""
    return [
        {
            "secret": s.secret,
            "expires_at": s.expires_at.isoformat() if s.expires_at is not None else None,
        }
        for s in secrets
    ]


def _decode_secrets(stored: Sequence[Mapping[str, Any]]) -> tuple[StoredSecret, ...]:
    return tuple(
        StoredSecret(
            s["secret"],
            datetime.fromisoformat(s["expires_at"]) if s.get("expires_at") else None,
        )
        for s in stored
    )


def _row(found: Any) -> EndpointRow:
    return EndpointRow(
        id=found.id,
        tenant_id=found.tenant_id,
        target_module=found.target_module,
        url=found.url,
        event_types=list(found.event_types) if found.event_types is not None else None,
        format=found.format,
        enabled=found.enabled,
        ordered=found.ordered,
        secrets=_decode_secrets(found.secrets),
        disabled_reason=found.disabled_reason,
        created_at=found.created_at,
        updated_at=found.updated_at,
        failing_since=found.failing_since,
    )


def _values(row: EndpointRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "tenant_id": row.tenant_id,
        "target_module": row.target_module,
        "url": row.url,
        "event_types": row.event_types,
        "format": row.format,
        "enabled": row.enabled,
        "ordered": row.ordered,
        "secrets": _encode_secrets(row.secrets),
        "disabled_reason": row.disabled_reason,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "failing_since": row.failing_since,
    }


def _in_tenant(tenant_id: uuid.UUID | None) -> ColumnElement[bool]:
    """The tenant's rows; every row for ``None`` (a system admin naming no tenant)."""
    return true() if tenant_id is None else _table.c.tenant_id == tenant_id


def insert(session: Session, row: EndpointRow) -> None:
    """Store a new endpoint."""
    session.execute(_table.insert().values(**_values(row)))


def get(
    session: Session,
    endpoint_id: uuid.UUID,
    tenant_id: uuid.UUID | None,
    *,
    for_update: bool = False,
) -> EndpointRow | None:
    """The endpoint ``endpoint_id`` of the tenant (of any tenant for ``None``), locked until the
    transaction ends when ``for_update`` (two rotations at once must not both keep the same
    previous secret)."""
    stmt = select(_table).where(_table.c.id == endpoint_id, _in_tenant(tenant_id))
    if for_update:
        stmt = stmt.with_for_update()
    found = session.execute(stmt).one_or_none()
    return _row(found) if found is not None else None


def list_endpoints(
    session: Session, tenant_id: uuid.UUID | None, target_module: str | None
) -> list[EndpointRow]:
    """The tenant's endpoints (every tenant's for ``None``), of ``target_module`` when given,
    oldest first."""
    stmt = select(_table).where(_in_tenant(tenant_id))
    if target_module is not None:
        stmt = stmt.where(_table.c.target_module == target_module)
    stmt = stmt.order_by(_table.c.created_at, _table.c.id)
    return [_row(found) for found in session.execute(stmt)]


def count(session: Session, tenant_id: uuid.UUID) -> int:
    """How many endpoints the tenant has."""
    stmt = select(func.count()).select_from(_table).where(_table.c.tenant_id == tenant_id)
    return int(session.execute(stmt).scalar_one())


def save(session: Session, row: EndpointRow) -> None:
    """Write every changeable column of ``row`` over its stored version."""
    values = _values(row)
    for fixed in ("id", "tenant_id", "target_module", "created_at"):
        del values[fixed]
    session.execute(update(_table).where(_table.c.id == row.id).values(**values))


def delete_endpoint(session: Session, endpoint_id: uuid.UUID, tenant_id: uuid.UUID | None) -> bool:
    """Delete the tenant's endpoint (any tenant's for ``None``); False if there was none."""
    result = session.execute(
        delete(_table).where(_table.c.id == endpoint_id, _in_tenant(tenant_id))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- delivery: a worker's reads and the health it writes ------------------------------------


def for_delivery(
    session: Session, target_module: str, tenant_ids: Collection[uuid.UUID]
) -> list[EndpointRow]:
    """Every endpoint (enabled or not) of ``target_module`` in these tenants, oldest first:
    a batch's events go to the enabled ones and wait for the disabled ones."""
    stmt = (
        select(_table)
        .where(_table.c.target_module == target_module, _table.c.tenant_id.in_(list(tenant_ids)))
        .order_by(_table.c.created_at, _table.c.id)
    )
    return [_row(found) for found in session.execute(stmt)]


def module_has_any(session: Session, target_module: str) -> bool:
    """Whether any tenant has an endpoint of ``target_module``."""
    stmt = select(_table.c.id).where(_table.c.target_module == target_module).limit(1)
    return session.execute(stmt).first() is not None


def ordered_types(session: Session, target_module: str) -> list[list[str] | None]:
    """The ``event_types`` of every enabled ordered endpoint of ``target_module`` (None: all)."""
    stmt = select(_table.c.event_types).where(
        _table.c.target_module == target_module, _table.c.ordered, _table.c.enabled
    )
    return [list(types) if types is not None else None for (types,) in session.execute(stmt)]


def mark_failing(session: Session, endpoint_ids: Collection[uuid.UUID], now: datetime) -> None:
    """These endpoints failed a delivery: failing since ``now`` unless they already were."""
    if endpoint_ids:
        session.execute(
            update(_table)
            .where(_table.c.id.in_(list(endpoint_ids)), _table.c.failing_since.is_(None))
            .values(failing_since=now)
        )


def mark_healthy(session: Session, endpoint_ids: Collection[uuid.UUID]) -> None:
    """These endpoints answered 2xx: no longer failing (no write when they were not)."""
    if endpoint_ids:
        session.execute(
            update(_table)
            .where(_table.c.id.in_(list(endpoint_ids)), _table.c.failing_since.is_not(None))
            .values(failing_since=None)
        )


def disable(
    session: Session,
    endpoint_ids: Collection[uuid.UUID],
    reason: str,
    now: datetime,
    *,
    failing_before: datetime | None = None,
) -> list[uuid.UUID]:
    """Disable the enabled ones of these endpoints (only those failing since before
    ``failing_before`` when given), with ``reason``; the ids disabled."""
    if not endpoint_ids:
        return []
    where = [_table.c.id.in_(list(endpoint_ids)), _table.c.enabled]
    if failing_before is not None:
        where.append(_table.c.failing_since < failing_before)
    result = session.execute(
        update(_table)
        .where(*where)
        .values(enabled=False, disabled_reason=reason[:255], updated_at=now)
        .returning(_table.c.id)
    )
    return [endpoint_id for (endpoint_id,) in result]
