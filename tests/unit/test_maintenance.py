"""The maintenance runner: each chore on its own interval; one failing chore stops no other."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from bus.maintenance.chore import Chore
from bus.maintenance.runner import Maintenance
from bus.observability import metrics
from tests.support.processes import wait_for


def _runtime() -> Any:
    settings = SimpleNamespace(relay_interval_seconds=0.05)
    return SimpleNamespace(settings=settings)


def _failures(chore: str) -> float:
    return metrics.MAINTENANCE_FAILURES.labels(chore)._value.get()


def test_a_failing_chore_never_stops_the_others() -> None:
    # Given a chore that always raises beside one that counts its passes
    passes: list[int] = []
    closed = threading.Event()

    def broken() -> int:
        raise RuntimeError("database down")

    before = _failures("broken")
    maintenance = Maintenance(
        _runtime(),
        [
            Chore("broken", 0.01, broken),
            Chore("counting", 0.01, lambda: passes.append(1) or 0, close=closed.set),
        ],
    )
    thread = threading.Thread(target=maintenance.run, daemon=True)
    # When it runs
    thread.start()
    try:
        # Then the healthy chore keeps running while the broken one fails, counted per chore
        wait_for(lambda: len(passes) >= 5, 5, "the healthy chore stopped running")
        wait_for(lambda: _failures("broken") >= before + 2, 5, "failures not counted")
    finally:
        maintenance.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert closed.is_set(), "a chore's close was not called when the process stopped"
    assert _failures("counting") == 0


def test_a_full_batch_runs_again_at_once_and_a_short_one_waits() -> None:
    # Given a chore with a long interval whose first three passes each do a full batch
    done = [10, 10, 10, 3]
    passes: list[int] = []

    def run() -> int:
        passes.append(1)
        return done.pop(0) if done else 0

    maintenance = Maintenance(_runtime(), [Chore("backlog", 3600.0, run, batch=10)])
    thread = threading.Thread(target=maintenance.run, daemon=True)
    thread.start()
    try:
        # Then the backlog drains without waiting, and the short pass waits the interval
        wait_for(lambda: len(passes) >= 4, 5, "a full batch did not run again at once")
        assert not done
    finally:
        maintenance.stop()
        thread.join(5)
    assert len(passes) == 4
