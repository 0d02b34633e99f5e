"""The list: one page of a tenant's events, by page number or by signed cursor,
within ``EVENTBUS_MAX_RESPONSE_BYTES``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Generator
from typing import TYPE_CHECKING

from bus.auth import Principal, acting_tenant, require_reader
from bus.events.schemas import (
    ListQuery,
)
from bus.read import cursors, pages
from bus.read.pages import Page
from bus.settings import LARGEST_EVENT_OVERHEAD, Settings
from bus.storage import event_queries
from bus.storage.models import SystemEvent

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def list_events(
    session: Session,
    settings: Settings,
    principal: Principal,
    tenant_param: str | None,
    query: ListQuery,
) -> Page:
    """One page of the caller's events (every tenant's for a system admin naming none), its
    body within ``EVENTBUS_MAX_RESPONSE_BYTES``: a page that would pass it is cut
    (see :mod:`bus.read.pages`). The page is ``page``'s, or the one after ``cursor``'s position
    (``Invalid cursor`` unless this bus made it for this tenant and these filters); either way
    it carries the cursor of the page after it, null when none follows (one more row is read
    to know).

    Rows are read a few at a time, as many as a quarter of the budget holds at the largest
    event's size, so a request holds about the budget whatever the page.
    """
    require_reader(principal)
    tenant_id = acting_tenant(principal, tenant_param, creating=False)
    key = cursors.derive_key(settings.signing_secret())
    after = None
    if query.cursor:
        position = cursors.decode(key, query.cursor, tenant_id, query.filters)
        after = (position.created_at, position.id)
    budget = settings.max_response_bytes
    largest = settings.max_event_data_bytes + LARGEST_EVENT_OVERHEAD
    batch = max(1, min(query.limit, budget // (4 * largest)))
    seen: list[cursors.Position] = []
    rows = _noting(
        event_queries.stream_page(session, tenant_id, query, batch, after=after, peek=1), seen
    )
    try:
        events, cut = pages.fit(itertools.islice(rows, query.limit), budget)
        more = cut or next(rows, None) is not None
    finally:
        rows.close()
    if after is None and not more and (events or query.page == 1):
        total = query.offset + len(events)  # this page ends the set: no COUNT needed
    else:
        total = event_queries.count_events(session, tenant_id, query)
    if after is None:
        page = pages.page_of(query, events, total, cut=cut)
    else:
        page = Page(events, None, len(events) if cut else query.limit, total)
    kept = len(page.events)
    if not (kept and (more or kept < len(events))):
        return page
    next_cursor = cursors.encode(key, seen[kept - 1], tenant_id, query.filters)
    return dataclasses.replace(page, next_cursor=next_cursor)


def _noting(
    rows: Generator[SystemEvent, None, None], seen: list[cursors.Position]
) -> Generator[SystemEvent, None, None]:
    """``rows``, noting the list position of each as it passes."""
    try:
        for row in rows:
            seen.append(cursors.Position(row.created_at, row.id))
            yield row
    finally:
        rows.close()
