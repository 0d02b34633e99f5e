"""Handlers of the ops tests' workers (loaded through EVENTBUS_HANDLERS in the subprocess)."""

from __future__ import annotations

import os
import signal
import time

from workers import Event, handler

MODULE = "metered"


@handler(MODULE, "ok")
def succeeds(event: Event) -> None:
    time.sleep(float(event.event_data.get("sleep", 0)))


@handler(MODULE, "boom")
def always_fails(event: Event) -> None:
    raise RuntimeError(f"boom on attempt {event.attempt}")


@handler(MODULE, "die")
def kills_its_process(event: Event) -> None:
    os.kill(os.getpid(), signal.SIGKILL)
