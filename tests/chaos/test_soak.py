"""The soak: 20,000 events through a bus that meets one fault after another (``make soak``,
bounded to about 15 minutes; not part of ``make test``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.chaos.harness import Stack, StackFactory, plan
from tests.support.servers import PostgresCluster

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1200)]

EVENTS = 20_000
PAUSE = 12.0


def restart_postgres(s: Stack, pg: PostgresCluster) -> None:
    with s.publishing:  # between two published batches
        s.fault()
        pg.kill()
        time.sleep(1.0)
        pg.start()


def test_soak(stack: StackFactory, pg: PostgresCluster) -> None:
    # Given the whole bus: two prefork workers, two relays
    s = stack()
    s.start_workers("w1", "w2")
    s.start_relay("r1")
    s.start_relay("r2")
    # When 20,000 events (3 of them poison) are published at a steady pace while, one after
    # another, a worker, pool processes, Redis, PostgreSQL and a relay are killed
    published = s.publish_in_background(plan(EVENTS - 3, seed=100, poison=3), rate=150.0)

    def kill_and_restart(name: str) -> Callable[[], None]:
        def run() -> None:
            s.kill(name)
            if name.startswith("w"):
                s.start_workers(name)
            else:
                s.start_relay(name)

        return run

    def redis_down() -> None:
        s.kill_redis()
        time.sleep(1.0)
        s.start_redis()

    def pool_children() -> None:
        for n in range(3):
            s.kill_pool_child(f"w{n % 2 + 1}")
            time.sleep(0.5)

    faults: list[tuple[str, Callable[[], None]]] = [
        ("worker w1 SIGKILLed", kill_and_restart("w1")),
        ("3 pool processes SIGKILLed", pool_children),
        ("Redis SIGKILLed (no AOF), restarted empty", redis_down),
        ("PostgreSQL SIGKILLed and restarted", lambda: restart_postgres(s, pg)),
        ("relay r1 SIGKILLed", kill_and_restart("r1")),
        ("worker w2 SIGKILLed", kill_and_restart("w2")),
        ("Redis SIGKILLed again", redis_down),
        ("PostgreSQL SIGKILLed again", lambda: restart_postgres(s, pg)),
    ]
    for what, inject in faults:
        time.sleep(PAUSE)
        print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)
        inject()
    ids = published()
    s.settle(len(ids), timeout=420)
    # Then nothing is lost or completed twice
    counts = s.count(
        "soak",
        "20,000 events at 150/s; in a row, 12 s apart: a worker, 3 pool processes, Redis, "
        "PostgreSQL, a relay, the other worker, Redis, PostgreSQL",
        "all of the above",
        answered=ids,
        cuts_expected=True,
    )
    counts.record()
    counts.check()
    assert counts.published >= EVENTS
