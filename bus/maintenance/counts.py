"""Fold the count changes the writes append into one row per key, so the list's exact
``total`` and the stats read a few rows per tenant."""

from __future__ import annotations

from bus.maintenance.chore import Chore
from bus.runtime import Bus
from bus.storage import count_store
from bus.storage.db import transaction


def fold_counts(bus: Bus) -> int:
    """Fold one batch of appended count changes (``count_store.fold_counts``)."""
    with transaction(bus.sessions) as session:
        return count_store.fold_counts(session)


def chore(bus: Bus) -> Chore:
    """As often as the re-send: a total read right after a publish is at most this late."""
    return Chore("fold_counts", bus.settings.relay_interval_seconds, lambda: fold_counts(bus))
