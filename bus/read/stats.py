"""The stats: each module's events counted by status, the oldest pending event's age,
and (``series=minute``) what the handlers did minute by minute over the last hour.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bus.auth import Principal, acting_tenant, require_reader
from bus.events.rules import utcnow
from bus.events.schemas import (
    format_timestamp,
)
from bus.storage import count_store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class Stats:
    """What an operator checks first: each module's events by status, and how long the oldest
    pending one has waited."""

    tenant_id: uuid.UUID | None
    generated_at: datetime
    modules: list[dict[str, Any]]
    totals: dict[str, int]
    oldest_pending_age_seconds: float | None
    series: list[dict[str, Any]] | None = None


_COUNTS = ("pending", "processed", "failed", "retry_scheduled")


SERIES_MINUTES = 60
"""``series=minute`` covers the 60 minutes that end with the current one."""


def event_stats(
    session: Session,
    principal: Principal,
    tenant_param: str | None,
    series: str | None = None,
    now: datetime | None = None,
) -> Stats:
    """``GET /system/events/stats``: counts by target module and status, with the same reader
    rule and tenancy as the list (a system admin naming no tenant sees every tenant's).

    ``failed`` counts every failed event; ``retry_scheduled`` those of them with a retry to
    come, so failed - retry_scheduled have given up and need a person.
    """
    require_reader(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    now = now or utcnow()
    modules: list[dict[str, Any]] = []
    for row in count_store.stats_by_module(session, tenant_id):
        view: dict[str, Any] = {"target_module": row.target_module}
        view.update({name: getattr(row, name) for name in _COUNTS})
        view["total"] = row.pending + row.processed + row.failed
        view["oldest_pending_age_seconds"] = _age(row.oldest_pending_created_at, now)
        modules.append(view)
    totals = {name: sum(m[name] for m in modules) for name in (*_COUNTS, "total")}
    ages = [m["oldest_pending_age_seconds"] for m in modules]
    known = [a for a in ages if a is not None]
    points = None if series is None else _minutes(session, tenant_id, now)
    return Stats(tenant_id, now, modules, totals, max(known) if known else None, points)


def _minutes(session: Session, tenant_id: uuid.UUID | None, now: datetime) -> list[dict[str, Any]]:
    """Handler attempts per minute and target module by outcome, oldest first, only minutes
    with one: what the operators' chart draws."""
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=SERIES_MINUTES - 1)
    return [
        {
            "minute": format_timestamp(point.minute),
            "target_module": point.target_module,
            "processed": point.processed,
            "failed": point.failed,
            "lost": point.lost,
        }
        for point in count_store.outcomes_by_minute(session, tenant_id, since)
    ]


def _age(since: datetime | None, now: datetime) -> float | None:
    if since is None:
        return None
    return round(max(0.0, (now - since).total_seconds()), 3)
