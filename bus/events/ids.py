"""Event ids that name their time (UUIDv7, RFC 9562), so an id also names its partition.

The history is partitioned by ``created_at`` (``bus.storage.partitions``). An id the bus makes
carries the millisecond of its event's ``created_at`` in its first 48 bits, so a look-up by id
reads one partition: ``created_at`` lies in :func:`window`. Any other UUID (a version-4 id of
an event stored before the history was partitioned, or a test's) has no such window: its
look-up reads every partition's id index, which retention empties of such ids in time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
"""The window of an id that names no time: every ``created_at`` PostgreSQL and SQLite hold."""

_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_MS = (LATEST - _EPOCH) // _MS


def new_event_id(at: datetime) -> uuid.UUID:
    """A UUIDv7 for an event created ``at``: its millisecond, then 74 random bits."""
    ms = (at - _EPOCH) // _MS
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 64 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    return uuid.UUID(int=value)


def created_at_of(event_id: uuid.UUID) -> datetime | None:
    """The millisecond a UUIDv7 names; None for any other id."""
    if event_id.version != 7:
        return None
    ms = event_id.int >> 80
    if ms >= _LAST_MS:  # past what a datetime holds: no bus made it, and it names no partition
        return None
    return _EPOCH + ms * _MS


def window(event_ids: Iterable[uuid.UUID]) -> tuple[datetime, datetime]:
    """``[lo, hi)`` holding the ``created_at`` of every one of these events: the bound a
    statement adds to its id condition so PostgreSQL reads only their partitions."""
    lo, hi = LATEST, EARLIEST
    for event_id in event_ids:
        at = created_at_of(event_id)
        if at is None:
            return EARLIEST, LATEST
        lo, hi = min(lo, at), max(hi, at + _MS)
    return (lo, hi) if lo < hi else (EARLIEST, LATEST)
