"""A page of the list that fits ``EVENTBUS_MAX_RESPONSE_BYTES``.

A page whose events would pass the budget is cut, never streamed past it: the envelope stays
whole and ``total`` exact. A cut page answers a smaller ``limit`` (and, past the first page, the
``page`` of that limit where its first event sits), so ``(page - 1) * limit`` is still the
offset of its first event and ``page + 1`` with the answered ``limit`` continues right after it.

Every page also carries ``next_cursor`` (``bus.read.cursors``), null on the last page: a page read
by
cursor answers ``page`` null (its place is the cursor's) and, when cut, the ``limit`` it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bus.events.schemas import ListQuery, encode, event_view
from bus.storage.models import SystemEvent

_ENVELOPE = (
    b'{"success":true,"message":"Events retrieved successfully","events":[',
    b'],"page":%s,"limit":%d,"total":%d,"next_cursor":%s}',
)
ENVELOPE_BYTES = len(_ENVELOPE[0]) + len(_ENVELOPE[1]) + 3 * 20 + 128
"""The envelope around the events, its three numbers at their widest and a cursor."""


@dataclass(frozen=True, slots=True)
class Page:
    """Events already encoded, each once, and the page's numbers as answered."""

    events: list[bytes]
    page: int | None
    limit: int
    total: int
    next_cursor: str | None = None

    def body(self) -> bytes:
        """The seed's list envelope, compact JSON, ``next_cursor`` after its fields."""
        return (
            _ENVELOPE[0]
            + b",".join(self.events)
            + _ENVELOPE[1]
            % (
                b"null" if self.page is None else b"%d" % self.page,
                self.limit,
                self.total,
                b"null" if self.next_cursor is None else b'"%s"' % self.next_cursor.encode(),
            )
        )


def fit(rows: Iterable[SystemEvent], budget: int) -> tuple[list[bytes], bool]:
    """The events, encoded, while the body stays within ``budget`` bytes; True if cut.

    The first event is always kept (settings keep the budget above the largest event), so a
    client always makes progress. Reading stops at the first event that does not fit: rows
    past it are never encoded nor (with a streamed ``rows``) read.
    """
    events: list[bytes] = []
    size = ENVELOPE_BYTES
    for row in rows:
        encoded = encode(event_view(row))
        size += len(encoded) + 1
        if events and size > budget:
            return events, True
        events.append(encoded)
    return events, False


def page_of(query: ListQuery, events: list[bytes], total: int, *, cut: bool) -> Page:
    """The answer's numbers: the query's, or for a cut page the (page, limit) that name exactly
    where its events start (see the module's docstring)."""
    if not cut:
        return Page(events, query.page, query.limit, total)
    offset = query.offset
    # The largest limit ≤ the events that fit and dividing the offset: page·limit lands on it.
    limit = next(n for n in range(len(events), 0, -1) if offset % n == 0)
    return Page(events[:limit], offset // limit + 1, limit, total)
