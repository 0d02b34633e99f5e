"""Retention of the bus's side tables: attempt history older than
``EVENTBUS_ATTEMPTS_RETENTION_DAYS`` and expired idempotency keys, a bounded batch a pass.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bus.events.rules import utcnow
from bus.runtime import Bus
from bus.storage import attempt_store, idempotency_store
from bus.storage.db import transaction


def purge_attempts(bus: Bus, now: datetime | None = None) -> int:
    """Delete a bounded batch of attempt history entries older than
    ``EVENTBUS_ATTEMPTS_RETENTION_DAYS`` (``bus.storage.attempt_store.purge``): the relay does it
    each pass,
    so the table holds about that many days of attempts."""
    keep = timedelta(days=bus.settings.attempts_retention_days)
    with transaction(bus.sessions) as session:
        return attempt_store.purge(session, (now or utcnow()) - keep)


def purge_idempotency_keys(bus: Bus, now: datetime | None = None) -> int:
    """Delete a bounded batch of expired idempotency keys
    (``bus.storage.idempotency_store.purge_expired``):
    the relay does it each pass, so the table holds about one TTL of keys."""
    with transaction(bus.sessions) as session:
        return idempotency_store.purge_expired(session, now or utcnow())
