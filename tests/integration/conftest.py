"""The integration suite runs real ``eventbus worker`` subprocesses on the test's own queues
(``start_worker``, in ``tests/conftest.py``) with the handlers of ``tests.support.handlers``.

Settings reach a subprocess only through ``EVENTBUS_*`` variables, built from the test's
:class:`Settings` (:func:`tests.support.processes.settings_env`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.processes import Proc, eventbus, free_port, settings_env
from tests.support.workers import WORKER_SETTINGS


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The test handlers, fast retries, no metrics port."""
    return dict(WORKER_SETTINGS)


@pytest.fixture(autouse=True)
def _handler_effects(effects: None) -> None:
    """Every test here may read what the handlers wrote: the table exists and is empty."""


@pytest.fixture
def api(runtime: Runtime, settings: Settings) -> Iterator[str]:
    """`eventbus api` on a free loopback port, over the test's database."""
    port = free_port()
    proc = Proc(
        eventbus("api", "--host", "127.0.0.1", "--port", str(port)),
        settings_env(settings),
    )
    try:
        proc.wait_for_output("Application startup complete", 30.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
