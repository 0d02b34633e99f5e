"""What a maintenance chore is: a bounded pass run on its own interval."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Chore:
    """One background duty of the bus.

    ``run`` does one bounded pass and returns how much it did; a pass that did ``batch`` or
    more runs again at once (a backlog drains at full speed), any other waits ``interval``
    seconds. ``close`` lets go of what the chore holds (a broker connection).
    """

    name: str
    interval: float
    run: Callable[[], int]
    batch: int | None = None
    close: Callable[[], None] = _nothing
