"""The one mapping from a module to its queue name."""

from __future__ import annotations

PROCESS_EVENT_TASK = "eventbus.process_event"
"""One event: ``args=[event_id]``. What the bus sent before batches; still run (rolling upgrade)."""
PROCESS_EVENTS_TASK = "eventbus.process_events"
"""Events committed together for one module: ``args=[[event_id, …]]``, at most
``EVENTBUS_DISPATCH_BATCH_SIZE`` ids."""
BUS_TASKS = (PROCESS_EVENT_TASK, PROCESS_EVENTS_TASK)

WAKE_BOUND_HEADER = "eventbus_wake_bound"
"""On a bus message: push it only while fewer than this many wait on its queue (Redis). Every
message is a wake-up: a worker claims what is ready from the in-flight set, whatever ids the
message names, so one more waiting message would add nothing."""


def queue_name(module: str, prefix: str) -> str:
    """The Celery queue (and, on Redis, the list key) that holds a module's events."""
    return f"{prefix}{module}"
