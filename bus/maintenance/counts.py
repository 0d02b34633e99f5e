"""Fold the count changes the writes append into one row per key, so the list's exact
``total`` and the stats read a few rows per tenant.
"""

from __future__ import annotations

from bus.runtime import Bus
from bus.storage import count_store
from bus.storage.db import transaction


def fold_counts(bus: Bus) -> int:
    """Fold the count changes the writes appended (``count_store.fold_counts``): the relay does
    it each pass, so the list's exact ``total`` reads a few rows per tenant."""
    with transaction(bus.sessions) as session:
        return count_store.fold_counts(session)
