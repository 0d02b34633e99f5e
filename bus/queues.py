"""The one mapping from a module to its queue name."""

from __future__ import annotations

PROCESS_EVENT_TASK = "eventbus.process_event"


def queue_name(module: str, prefix: str) -> str:
    """The Celery queue (and, on Redis, the list key) that holds a module's events."""
    return f"{prefix}{module}"
