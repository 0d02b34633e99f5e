"""Redis failover behind Sentinel: the bus's broker URL names the sentinels only; the primary
is SIGKILLed while both API hosts publish, the sentinels promote the replica, and every worker
must consume again from the new master (within 60 s), with the chaos ledger's counts (lost 0,
completed twice 0, no 201 missing) and no publish given up.

Recorded in ``tests/chaos/last_run.json`` like the network scenarios (tests/faults/test_network.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.chaos.harness import plan
from tests.faults.harness import NetStack
from tests.faults.sentinel import DOWN_AFTER_MS, SentinelStack
from tests.faults.test_network import BACK_WITHIN, BROKER_LOST, _back_after, _count, _noticed
from tests.support.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

EVENTS = 2000
RATE = 50.0  # 40 s of publishing: the kill and the promotion fall inside it
WORKERS = ("w1", "w2", "w3")
GRACE = 1.0
"""A handler started within this of the kill may be of a batch claimed before it: the wait for
a worker's return counts from here."""


def _ready(s: SentinelStack, api: str) -> bool:
    """Whether ``api`` answers /readyz 200 (its probe pings the master through the sentinels)."""

    def get() -> bool:
        try:
            return httpx.get(f"{s.url_of(api)}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    return s.net.call_in("client", get)


def test_redis_primary_killed_sentinel_promotes_the_replica(
    netstack: Callable[..., NetStack],
) -> None:
    # Given the bus on its hosts, every process reaching Redis through the sentinels, and
    # publishing through both APIs
    s = netstack(kind=SentinelStack)
    assert isinstance(s, SentinelStack)
    s.start_api("api1")
    s.start_api("api2")
    s.start_workers(*WORKERS, pool="solo")
    s.start_relay()
    published = s.publish_steady(plan(EVENTS, seed=51, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When the primary on host redis is SIGKILLed and the sentinels promote the replica on redis2
    killed = time.time()
    s.kill_redis()
    promoted = s.wait_promoted(killed)
    # Then every worker consumes again, from the new master
    back = {w: round(_back_after(s, w, killed + GRACE) + GRACE, 1) for w in WORKERS}
    noticed = {w: _noticed(s, w, killed, BROKER_LOST) for w in WORKERS}
    reconnected = {w: _noticed(s, w, killed, ("Connected to sentinel://",)) for w in WORKERS}
    for api in ("api1", "api2"):
        wait_for(lambda api=api: _ready(s, api), 15, f"{api} ready on the new master")
    outcome = published()
    counts = _count(
        s,
        "net_sentinel_failover",
        "the Redis primary SIGKILLed mid-traffic; 3 sentinels (quorum 2, down after "
        f"{DOWN_AFTER_MS / 1000:g} s) promote the replica on another host",
        "every broker connection (the workers', the APIs' and the relay's sends, the probes) "
        "asks the sentinels for the master when it connects, so it follows the promotion; "
        "replication is asynchronous, so the promoted replica may lack the last wake-ups and "
        "acknowledgements: claims live in PostgreSQL, not in Redis, so a lost wake-up costs "
        "latency (the workers' 1 s polls and the relay send it again), a restored one a claim "
        "that finds nothing; sends while no master answers fail fast, their events committed",
        outcome,
    )
    detected = [t for t in noticed.values() if t is not None]
    counts.detect_seconds = min(detected) if detected else None
    counts.recovery_seconds = max(back.values())
    counts.record()
    answers = dict(outcome.answers)
    print(
        f"promoted {promoted} s after the kill; workers noticed {noticed}, reconnected "
        f"{reconnected}, ran handlers again {back}; publishing: {answers}, retried "
        f"{outcome.retried}; {counts}"
    )
    counts.check()
    outcome.check_served(timeouts=False)
    assert all(t <= BACK_WITHIN for t in back.values()), back
    assert s.master() is s.replica
