"""Retention of the bus's side tables: attempt history older than
``EVENTBUS_ATTEMPTS_RETENTION_DAYS`` and expired idempotency keys, a bounded batch a pass."""

from __future__ import annotations

from datetime import datetime, timedelta

from bus.events.rules import utcnow
from bus.maintenance.chore import Chore
from bus.runtime import Runtime
from bus.storage import attempt_store, idempotency_store
from bus.storage.db import transaction

INTERVAL_SECONDS = 5.0
"""Between passes that found less than a batch; a full batch is followed at once."""


def purge_attempts(runtime: Runtime, now: datetime | None = None) -> int:
    """Delete a bounded batch of attempt history entries older than
    ``EVENTBUS_ATTEMPTS_RETENTION_DAYS`` (``attempt_store.purge``)."""
    # never kept longer than their events
    settings = runtime.settings
    keep = timedelta(days=min(settings.attempts_retention_days, settings.retention_days))
    with transaction(runtime.sessions) as session:
        return attempt_store.purge(session, (now or utcnow()) - keep)


def purge_idempotency_keys(runtime: Runtime, now: datetime | None = None) -> int:
    """Delete a bounded batch of expired idempotency keys (``idempotency_store.purge_expired``),
    so the table holds about one TTL of keys."""
    with transaction(runtime.sessions) as session:
        return idempotency_store.purge_expired(session, now or utcnow())


def chores(runtime: Runtime) -> list[Chore]:
    """One chore per table, so a failure in one never stops the other."""
    return [
        Chore(
            "purge_attempts",
            INTERVAL_SECONDS,
            lambda: purge_attempts(runtime),
            batch=attempt_store.PURGE_BATCH,
        ),
        Chore(
            "purge_idempotency_keys",
            INTERVAL_SECONDS,
            lambda: purge_idempotency_keys(runtime),
            batch=idempotency_store.PURGE_BATCH,
        ),
    ]
