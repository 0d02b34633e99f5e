"""Fold each closed minute of handler outcomes into a row per key and purge the minutes
the stats' chart no longer shows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bus.events.rules import utcnow
from bus.runtime import Bus
from bus.storage import count_store
from bus.storage.db import transaction

MINUTES_KEPT = timedelta(hours=2)
"""The chart shows the last hour; a second one is kept for late writers and clocks."""


def fold_outcome_minutes(bus: Bus, now: datetime | None = None) -> int:
    """Fold each closed minute of handler outcomes into a row per key and purge the minutes
    the chart no longer shows (``count_store.fold_outcome_minutes``): the relay does it once a
    minute, when a minute closes, so the stats' series reads about a row per minute and key."""
    now = now or utcnow()
    closed = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    with transaction(bus.sessions) as session:
        return count_store.fold_outcome_minutes(session, closed, now - MINUTES_KEPT)
