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
    Subquery,
    Table,
    func,
    literal,
    not_,
    select,
    tuple_,
)

from bus.events.schemas import RETRY_SCHEDULED, ListQuery
from bus.storage.count_store import tally
from bus.storage.models import (
    QUEUED_EVENT,
    RETRY_TO_COME,
    EventRow,
    EventStatus,
    SystemEvent,
    event_queue,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_table: Table = SystemEvent.__table__  # type: ignore[assignment]
_queue = event_queue


def _filtered(stmt: Select[Any], tenant_id: uuid.UUID | None, query: ListQuery) -> Select[Any]:
    if tenant_id is not None:
        stmt = stmt.where(SystemEvent.tenant_id == tenant_id)
    for name, value in query.filters.items():
        if name != RETRY_SCHEDULED:
            stmt = stmt.where(getattr(SystemEvent, name) == value)
        elif value == "true":
            stmt = stmt.where(
                SystemEvent.status == EventStatus.FAILED, SystemEvent.next_attempt_at.is_not(None)
            )
        else:
            stmt = stmt.where(SystemEvent.next_attempt_at.is_(None))
    return stmt


def _in_flight(filters: Mapping[str, str]) -> bool:
    """True when only unfinished events can match (``status`` pending or failed, or a retry to
    come): the in-flight set holds them all, with every column a filter reads, so the keys are
    found there and the history is read for the page's rows only. No index of the history
    holds ``status`` (a completion would have to rewrite it)."""
    status = filters.get("status")
    if status is not None:
        return status != EventStatus.PROCESSED
    return filters.get(RETRY_SCHEDULED) == "true"


def _queued(stmt: Select[Any], tenant_id: uuid.UUID | None, query: ListQuery) -> Select[Any]:
    """:func:`_filtered` on the in-flight set's copy of the filtered columns."""
    if tenant_id is not None:
        stmt = stmt.where(_queue.c.tenant_id == tenant_id)
    for name, value in query.filters.items():
        if name != RETRY_SCHEDULED:
            stmt = stmt.where(_queue.c[name] == value)
        else:
            stmt = stmt.where(RETRY_TO_COME if value == "true" else not_(RETRY_TO_COME))
    return stmt


def _keys(tenant_id: uuid.UUID | None, query: ListQuery) -> tuple[Table, Select[Any]]:
    """The table the page's keys (id, created_at) are read from, and their filtered SELECT."""
    if _in_flight(query.filters):
        return _queue, _queued(select(_queue.c.id, _queue.c.created_at), tenant_id, query)
    return _table, _filtered(select(_table.c.id, _table.c.created_at), tenant_id, query)


def _rows_of(keys: Subquery, *order: Any) -> Select[Any]:
    return (
        select(SystemEvent)
        # created_at too: the partition key, so each row is read from its own day only
        .join(keys, (SystemEvent.id == keys.c.id) & (SystemEvent.created_at == keys.c.created_at))
        .order_by(*order)
    )


def _position(table: Table, at: tuple[datetime, uuid.UUID]) -> tuple[Any, Any]:
    """A row's (created_at, id) in ``table`` and the position ``at``, to compare by keyset."""
    return tuple_(table.c.created_at, table.c.id), tuple_(
        literal(at[0], table.c.created_at.type), literal(at[1], table.c.id.type)
    )


def _below(table: Table, at: tuple[datetime, uuid.UUID]) -> Any:
    row, position = _position(table, at)
    return row < position


def list_statement(
    tenant_id: uuid.UUID | None,
    query: ListQuery,
    *,
    after: tuple[datetime, uuid.UUID] | None = None,
    peek: int = 0,
) -> Select[Any]:
    """The SELECT of one page: newest first, id breaking ties so pages never overlap; ``peek``
    rows more than the page, to tell whether another page follows.

    Every filter combination the API offers has an index that serves this order: an
    ``ix_events_*`` of the history, or, for the unfinished statuses, an ``ix_event_queue_*``
    of the in-flight set. ``after`` (a cursor's position: created_at, id) reads the page below
    it by keyset, a range on that same index. Past the first page by number the page's keys
    are found first, on the index alone, and only its rows are read: an OFFSET over whole rows
    would read (and throw away) every row before the page.
    """
    order = (_table.c.created_at.desc(), _table.c.id.desc())
    limit = query.limit + peek
    source, keys = _keys(tenant_id, query)
    if source is _table and query.offset == 0:
        stmt = _filtered(select(SystemEvent), tenant_id, query)
        if after is not None:
            stmt = stmt.where(_below(_table, after))
        return stmt.order_by(*order).limit(limit)
    if after is not None:
        keys = keys.where(_below(source, after))
    page = (
        keys.order_by(source.c.created_at.desc(), source.c.id.desc())
        .offset(query.offset if after is None else 0)
        .limit(limit)
        .subquery("page")
    )
    return _rows_of(page, page.c.created_at.desc(), page.c.id.desc())


def count_statement(tenant_id: uuid.UUID | None, query: ListQuery) -> Select[int]:
    """The COUNT of every event the page's filters match."""
    if _in_flight(query.filters):
        return _queued(select(func.count()).select_from(_queue), tenant_id, query)
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
    retry to come (in the in-flight set), ``false`` the tally of the other filters less that
    COUNT."""
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
    stmt: Select[Any],
    created_after: datetime | None,
    created_before: datetime | None,
    table: Table = _table,
) -> Select[Any]:
    if created_after is not None:
        stmt = stmt.where(table.c.created_at >= created_after)
    if created_before is not None:
        stmt = stmt.where(table.c.created_at < created_before)
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
    source = _queue if _in_flight(filters) else _table
    stmt = count_statement(tenant_id, query)
    return int(session.scalar(_created_between(stmt, created_after, created_before, source)) or 0)


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
    query = ListQuery(filters)
    if _in_flight(filters):
        # Ordered by the in-flight set's index, each row locked in its history partition; a
        # row skipped as locked lets the scan go on to the next (the LIMIT is above the lock).
        source = _queue
        stmt = _queued(select(_table).join_from(_queue, _table, QUEUED_EVENT), tenant_id, query)
    else:
        source, stmt = _table, _filtered(select(_table), tenant_id, query)
    stmt = _created_between(stmt, created_after, created_before, source)
    if after is not None:
        row, position = _position(source, after)
        stmt = stmt.where(row > position)
    stmt = (
        stmt.order_by(source.c.created_at, source.c.id)
        .limit(limit)
        .with_for_update(of=_table, skip_locked=True)
    )
    return [EventRow(**row) for row in session.connection().execute(stmt).mappings()]
