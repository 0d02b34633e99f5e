"""The SQL that reads many events of ``system_events``: the list (page, keyset stream,
count) and the rows a replay matches.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Select,
    Table,
    func,
    literal,
    select,
    tuple_,
)

from bus.events.schemas import RETRY_SCHEDULED, ListQuery
from bus.storage.count_store import tally
from bus.storage.models import (
    EventRow,
    EventStatus,
    SystemEvent,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_table: Table = SystemEvent.__table__  # type: ignore[assignment]


def _filtered(stmt: Select[Any], tenant_id: uuid.UUID | None, query: ListQuery) -> Select[Any]:
    if tenant_id is not None:
        stmt = stmt.where(SystemEvent.tenant_id == tenant_id)
    for name, value in query.filters.items():
        if name != RETRY_SCHEDULED:
            stmt = stmt.where(getattr(SystemEvent, name) == value)
        elif value == "true":
            # Spelled as the partial index ix_events_relay_failed is, so it can serve it.
            stmt = stmt.where(
                SystemEvent.status == EventStatus.FAILED, SystemEvent.next_attempt_at.is_not(None)
            )
        else:
            stmt = stmt.where(SystemEvent.next_attempt_at.is_(None))
    return stmt


def list_statement(
    tenant_id: uuid.UUID | None,
    query: ListQuery,
    *,
    after: tuple[datetime, uuid.UUID] | None = None,
    peek: int = 0,
) -> Select[Any]:
    """The SELECT of one page: newest first, id breaking ties so pages never overlap; ``peek``
    rows more than the page, to tell whether another page follows.

    Every filter combination the API offers has an ``ix_events_*`` index that serves this order.
    ``after`` (a cursor's position: created_at, id) reads the page below it by keyset, a range
    on that same index. Past the first page by number the page's keys are found first, on the
    index alone, and only its rows are read: an OFFSET over whole rows would read (and throw
    away) every row before the page.
    """
    order = (_table.c.created_at.desc(), _table.c.id.desc())
    limit = query.limit + peek
    if after is not None:
        below = tuple_(_table.c.created_at, _table.c.id) < tuple_(
            literal(after[0], _table.c.created_at.type), literal(after[1], _table.c.id.type)
        )
        stmt = _filtered(select(SystemEvent), tenant_id, query).where(below)
        return stmt.order_by(*order).limit(limit)
    if query.offset == 0:
        return _filtered(select(SystemEvent), tenant_id, query).order_by(*order).limit(limit)
    keys = (
        _filtered(select(_table.c.id, _table.c.created_at), tenant_id, query)
        .order_by(*order)
        .offset(query.offset)
        .limit(limit)
        .subquery("page")
    )
    return (
        select(SystemEvent)
        # created_at too: the partition key, so each row is read from its own day only
        .join(keys, (SystemEvent.id == keys.c.id) & (SystemEvent.created_at == keys.c.created_at))
        .order_by(keys.c.created_at.desc(), keys.c.id.desc())
    )


def count_statement(tenant_id: uuid.UUID | None, query: ListQuery) -> Select[int]:
    """The COUNT of every event the page's filters match."""
    return _filtered(select(func.count()).select_from(_table), tenant_id, query)


def list_page(
    session: Session, tenant_id: uuid.UUID | None, query: ListQuery
) -> tuple[Sequence[SystemEvent], int]:
    """A page (see :func:`list_statement`) and the count of all matches."""
    rows = session.scalars(list_statement(tenant_id, query)).all()
    if len(rows) < query.limit and (rows or query.page == 1):
        return rows, query.offset + len(rows)  # a short page ends the set: no COUNT needed
    return rows, count_events(session, tenant_id, query)


def stream_page(
    session: Session,
    tenant_id: uuid.UUID | None,
    query: ListQuery,
    batch: int,
    *,
    after: tuple[datetime, uuid.UUID] | None = None,
    peek: int = 0,
) -> Generator[SystemEvent, None, None]:
    """The rows of :func:`list_statement`, fetched ``batch`` at a time (a server-side cursor on
    PostgreSQL): a caller that stops early never reads, nor holds, the rest of the page."""
    stmt = list_statement(tenant_id, query, after=after, peek=peek)
    stmt = stmt.execution_options(yield_per=batch)
    result = session.scalars(stmt)
    try:
        yield from result
    finally:
        result.close()


def count_events(session: Session, tenant_id: uuid.UUID | None, query: ListQuery) -> int:
    """How many events the query's filters match, every page included: from the counts kept
    as data (:func:`tally`), or a COUNT where none are kept.

    ``retry_scheduled`` is no key of the counts: ``true`` is a COUNT of the few events with a
    retry to come (the partial index ``ix_events_relay_failed``), ``false`` the tally of the
    other filters less that COUNT."""
    flag = query.filters.get(RETRY_SCHEDULED)
    if flag is not None:
        rest = {name: value for name, value in query.filters.items() if name != RETRY_SCHEDULED}
        scheduled = ListQuery({**rest, RETRY_SCHEDULED: "true"})
        due = int(session.scalar(count_statement(tenant_id, scheduled)) or 0)
        if flag == "true":
            return due
        return count_events(session, tenant_id, ListQuery(rest)) - due
    tallied = tally(session, tenant_id, query.filters)
    if tallied is not None:
        return tallied
    return int(session.scalar(count_statement(tenant_id, query)) or 0)


def _created_between(
    stmt: Select[Any], created_after: datetime | None, created_before: datetime | None
) -> Select[Any]:
    if created_after is not None:
        stmt = stmt.where(_table.c.created_at >= created_after)
    if created_before is not None:
        stmt = stmt.where(_table.c.created_at < created_before)
    return stmt


def count_matching(
    session: Session,
    tenant_id: uuid.UUID | None,
    filters: Mapping[str, str],
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> int:
    """How many events a replay's filters match: the list's count (:func:`count_events`) when
    no time bounds it, else a COUNT over the filters' index."""
    query = ListQuery(filters)
    if created_after is None and created_before is None:
        return count_events(session, tenant_id, query)
    stmt = _created_between(count_statement(tenant_id, query), created_after, created_before)
    return int(session.scalar(stmt) or 0)


def lock_for_replay(
    session: Session,
    tenant_id: uuid.UUID | None,
    filters: Mapping[str, str],
    created_after: datetime | None,
    created_before: datetime | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[EventRow]:
    """Up to ``limit`` events matching a replay's filters, oldest first from just past
    ``after`` (the last of the previous batch: created_at, id), row-locked; events another
    transaction holds (a worker's attempt right now) are skipped (``SKIP LOCKED``). Read as
    :func:`claim_for_processing`'s, for ``bus.events.rules.save_changes``."""
    stmt = _filtered(select(_table), tenant_id, ListQuery(filters))
    stmt = _created_between(stmt, created_after, created_before)
    if after is not None:
        stmt = stmt.where(
            tuple_(_table.c.created_at, _table.c.id)
            > tuple_(
                literal(after[0], _table.c.created_at.type), literal(after[1], _table.c.id.type)
            )
        )
    stmt = (
        stmt.order_by(_table.c.created_at, _table.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [EventRow(**row) for row in session.connection().execute(stmt).mappings()]
