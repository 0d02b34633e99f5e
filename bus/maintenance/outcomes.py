"""Fold each closed minute of handler outcomes into a row per key and purge the minutes
the stats' chart no longer shows."""

from __future__ import annotations

from datetime import datetime, timedelta

from bus.events.rules import utcnow
from bus.maintenance.chore import Chore
from bus.runtime import Runtime
from bus.storage import count_store
from bus.storage.db import transaction

MINUTES_KEPT = timedelta(hours=2)
"""The chart shows the last hour; a second one is kept for late writers and clocks."""

CHECK_SECONDS = 5.0
"""How often the chore looks whether a minute has closed (it folds once per minute)."""


def fold_outcome_minutes(runtime: Runtime, now: datetime | None = None) -> int:
    """Fold the minutes before the current one and purge those past :data:`MINUTES_KEPT`
    (``count_store.fold_outcome_minutes``), so the stats' series reads about a row per
    minute and key."""
    now = now or utcnow()
    closed = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    with transaction(runtime.sessions) as session:
        return count_store.fold_outcome_minutes(session, closed, now - MINUTES_KEPT)


def chore(runtime: Runtime) -> Chore:
    """Folds once per minute, when a minute closes: only a closed minute has anything to
    fold."""
    folded: list[datetime] = []

    def run() -> int:
        minute = utcnow().replace(second=0, microsecond=0)
        if folded and folded[-1] == minute:
            return 0
        done = fold_outcome_minutes(runtime)
        folded[:] = [minute]
        return done

    return Chore("fold_outcome_minutes", CHECK_SECONDS, run)
