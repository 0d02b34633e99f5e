"""Replay by filter: the ``PUT … pending`` rule applied to every event a filter matches.

``POST /system/events/replay`` and ``eventbus replay`` both come here. A dry run only counts;
a real run takes the matches oldest first in batches of ``EVENTBUS_DISPATCH_BATCH_SIZE``, each
batch its own unit of work: lock (``FOR UPDATE SKIP LOCKED``), ``bus.events.rules.save_changes``
with
``pending`` (the one write path, as a ``PUT``), commit, and then one message per module of the
batch. A replay that stops half-way (a crash, the database) keeps the batches it committed: each
of them is pending and sent, or left to the relay.

:func:`steps` yields between batches: the API runs each on a heavy thread (``api.limits``) and
lets go of it in between; ``eventbus replay`` runs them all in its own thread (:func:`run`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bus.auth import Principal, require_writer, resolve_tenant
from bus.errors import InvalidField, InvalidJSONBody, InvalidStatus, UnknownBodyField
from bus.events.rules import Change, save_changes
from bus.events.schemas import (
    LIST_FILTERS,
    RETRY_SCHEDULED,
    StatusChange,
    parse_list_query,
    parse_timestamp,
)
from bus.observability import logs
from bus.settings import Settings
from bus.storage import event_queries
from bus.storage.models import EventStatus
from bus.uow import UnitOfWork

log = logging.getLogger(__name__)

DEFAULT_MAX = 10_000
MAX_MAX = 100_000
TIME_FIELDS = ("created_after", "created_before")
REPLAY_FIELDS = (*LIST_FILTERS, *TIME_FIELDS, "dry_run", "max")
"""What a replay body may hold; any other field is ``Unknown body field``."""

UnitsOfWork = Callable[[], UnitOfWork]
"""Makes a new unit of work (``bus.runtime.Runtime.unit_of_work``): one per batch."""


@dataclass(frozen=True, slots=True)
class ReplayQuery:
    """A validated replay: the list's filters (exact, AND-ed), ``created_at`` in
    ``[created_after, created_before)``, and at most ``max`` events replayed."""

    filters: Mapping[str, str]
    created_after: datetime | None = None
    created_before: datetime | None = None
    dry_run: bool = False
    max: int = DEFAULT_MAX


@dataclass(frozen=True, slots=True)
class Replayed:
    """``matched``: every event the filters match now; ``replayed``: those set pending and
    sent (0 for a dry run; at most ``max``; fewer when some were held by a worker)."""

    matched: int
    replayed: int
    dry_run: bool


def _absent(value: Any) -> bool:
    return value is None or value == ""


def parse_replay(body: Any) -> ReplayQuery:
    """Check a replay body: the list's filter rules (strings; null or ``""``: no filter),
    RFC 3339 times (null: no bound), ``dry_run`` a boolean, ``max`` an integer 1..100000
    (null: the defaults)."""
    if not isinstance(body, dict):
        raise InvalidJSONBody()
    if any(name not in REPLAY_FIELDS for name in body):
        raise UnknownBodyField()
    raw: dict[str, str | None] = {}
    for name in LIST_FILTERS:
        value = body.get(name)
        if _absent(value):
            continue
        if name == RETRY_SCHEDULED and isinstance(value, bool):
            value = "true" if value else "false"  # JSON's own spelling, beside the query's
        if not isinstance(value, str):
            raise InvalidStatus() if name == "status" else InvalidField(name)
        raw[name] = value
    filters = parse_list_query(raw).filters
    times = {
        name: None if body.get(name) is None else parse_timestamp(body[name], name)
        for name in TIME_FIELDS
    }
    dry_run = body.get("dry_run", False)
    if dry_run is None:
        dry_run = False
    if not isinstance(dry_run, bool):
        raise InvalidField("dry_run")
    limit = body.get("max", DEFAULT_MAX)
    if limit is None:
        limit = DEFAULT_MAX
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)  # JSON Schema's integer: 10.0 is one
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_MAX:
        raise InvalidField("max")
    return ReplayQuery(filters, times["created_after"], times["created_before"], dry_run, limit)


def replay(
    units: UnitsOfWork,
    settings: Settings,
    principal: Principal,
    tenant_param: str | None,
    body: Any,
) -> Generator[None, None, Replayed]:
    """``POST /system/events/replay``: a writer's right, the list's tenancy (a system admin
    naming no tenant replays in every tenant), then :func:`steps`: the API runs each step on
    a thread of its own, so a long replay never holds one for its whole run."""
    require_writer(principal)
    tenant_id = resolve_tenant(principal, tenant_param, creating=False)
    logs.bind(tenant_id=tenant_id)
    return (yield from steps(units, settings, tenant_id, parse_replay(body)))


def run(
    units: UnitsOfWork, settings: Settings, tenant_id: uuid.UUID | None, query: ReplayQuery
) -> Replayed:
    """:func:`steps` run to their end in the caller's thread (``eventbus replay``)."""
    walk = steps(units, settings, tenant_id, query)
    while True:
        try:
            next(walk)
        except StopIteration as stop:
            result: Replayed = stop.value
            return result


def steps(
    units: UnitsOfWork, settings: Settings, tenant_id: uuid.UUID | None, query: ReplayQuery
) -> Generator[None, None, Replayed]:
    """Count the matches; unless a dry run, set up to ``query.max`` of them pending, oldest
    first, one committed unit of work per batch (see the module's docstring). Yields after the
    count and after each batch: nothing is held between steps (no session, no rows).

    The batches walk by keyset (past the last event of the batch before), so an event is
    replayed once even when it still matches once pending; an event a worker holds right now
    is skipped (it is being run anyway).
    """
    with units() as uow:
        matched = event_queries.count_matching(
            uow.session, tenant_id, query.filters, query.created_after, query.created_before
        )
    if query.dry_run:
        return Replayed(matched, 0, dry_run=True)
    replayed = 0
    after: tuple[datetime, uuid.UUID] | None = None
    pending = StatusChange(EventStatus.PENDING)
    while replayed < query.max:
        yield
        size = min(settings.dispatch_batch_size, query.max - replayed)
        with units() as uow:
            rows = event_queries.lock_for_replay(
                uow.session,
                tenant_id,
                query.filters,
                query.created_after,
                query.created_before,
                after,
                size,
            )
            if not rows:
                break
            save_changes(uow, [Change(row, pending) for row in rows])
            uow.commit()
        replayed += len(rows)
        if len(rows) < size:
            break
        after = (rows[-1].created_at, rows[-1].id)
    log.info("replayed %d of %d matched events", replayed, matched)
    return Replayed(matched, replayed, dry_run=False)
