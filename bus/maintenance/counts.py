"""Fold the count changes the writes append into one row per key, so the list's exact
``total`` and the stats read a few rows per tenant."""

from __future__ import annotations

from bus.maintenance.chore import Chore
from bus.runtime import Runtime
from bus.storage import count_store
from bus.storage.db import transaction


def fold_counts(runtime: Runtime) -> int:
    """Fold one batch of appended count changes (``count_store.fold_counts``)."""
    with transaction(runtime.sessions) as session:
        return count_store.fold_counts(session)


def chore(runtime: Runtime) -> Chore:
    """As often as the re-send: a total read right after a publish is at most this late."""
    return Chore(
        "fold_counts", runtime.settings.relay_interval_seconds, lambda: fold_counts(runtime)
    )
