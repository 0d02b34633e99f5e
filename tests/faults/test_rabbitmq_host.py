"""RabbitMQ as the broker, on a host of its own: SIGKILLed under load and started again, cut
off from every worker for longer than an AMQP heartbeat, and cut off from both APIs. Publishing
goes on through both API hosts from the client host; the chaos ledger is counted (lost 0,
completed twice 0, no publish given up), the API never answers 500 nor holds a request past the
client's timeout, and each worker runs handlers again within 60 s of the broker's return.
Figures go to ``tests/chaos/last_run.json`` as test_network.py's do."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.chaos.harness import plan
from tests.faults.conftest import DATABASE
from tests.faults.hosts import HostPostgres
from tests.faults.network import Network
from tests.faults.rabbit import HostRabbit, RabbitNetStack
from tests.faults.test_network import (
    BACK_WITHIN,
    BROKER_LOST,
    EVENTS,
    LONG_EVENTS,
    RATE,
    _back_after,
    _count,
    _noticed,
    _runs_between,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

WORKERS = ("w1", "w2", "w3")
RECONNECTED = ("Connected to amqp://",)


@pytest.fixture
def rabbit(net: Network) -> Iterator[HostRabbit]:
    server = HostRabbit(net, "rabbit").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s(net: Network, pg: HostPostgres, rabbit: HostRabbit) -> Iterator[RabbitNetStack]:
    """The bus on its hosts, RabbitMQ its broker: two APIs, three solo workers, the relay."""
    stack = RabbitNetStack(net, pg, DATABASE, rabbit)
    try:
        stack.start_api("api1")
        stack.start_api("api2")
        stack.start_workers(*WORKERS, pool="solo")
        stack.start_relay()
        yield stack
    finally:
        net.heal()
        stack.stop()


def _first(s: RabbitNetStack, since: float, needles: tuple[str, ...]) -> dict[str, float | None]:
    return {w: _noticed(s, w, since, needles) for w in WORKERS}


def test_rabbitmq_killed_under_load_and_restarted(s: RabbitNetStack) -> None:
    # Given the bus on RabbitMQ, publishing through both APIs
    published = s.publish_steady(plan(EVENTS, seed=51, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When RabbitMQ is SIGKILLed and started again on its data 10 s later
    killed = time.time()
    s.kill_rabbit()
    time.sleep(10)
    s.rabbit.start()
    returned = time.time()
    back = {w: _back_after(s, w, returned) for w in WORKERS}
    outcome = published()
    counts = _count(
        s,
        "net_rabbitmq_killed",
        "RabbitMQ (own host) SIGKILLed under load, started again on its data after 10 s",
        "claims live in PostgreSQL, messages are wake-ups: the killed node resets every "
        "connection, the APIs' wake-up sends fail fast and are logged (the event is committed "
        "first); the workers' polls find the ready events but wake through the broker, so "
        "nothing runs until they reconnect (Celery's backoff: 2, 4, 6... s)",
        outcome,
    )
    noticed = _first(s, killed, BROKER_LOST)
    counts.detect_seconds = max((n for n in noticed.values() if n is not None), default=None)
    counts.recovery_seconds = max(back.values())
    counts.record()
    answers = dict(outcome.answers)
    reconnected = _first(s, returned, RECONNECTED)
    print(f"noticed {noticed}; reconnected {reconnected}; back {back}; {answers}, slowest "
          f"{outcome.slowest:.1f} s; {counts}")  # fmt: skip
    counts.check()
    outcome.check_served()
    assert all(n is not None for n in noticed.values()), noticed
    assert max(back.values()) <= BACK_WITHIN, back


def test_rabbitmq_partitioned_from_every_worker(s: RabbitNetStack) -> None:
    # Given the bus on RabbitMQ, publishing through both APIs for 70 s
    published = s.publish_steady(plan(LONG_EVENTS, seed=52, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When every packet between RabbitMQ and the three worker hosts is dropped for 40 s (past
    # an AMQP heartbeat's detection), then the links return; the APIs still reach it
    s.fault()
    cut = time.time()
    for host in ("worker1", "worker2", "worker3"):
        s.net.cut("rabbit", host)
    time.sleep(40)
    s.net.heal("rabbit")
    healed = time.time()
    back = {w: _back_after(s, w, healed) for w in WORKERS}
    during = {w: _runs_between(s, w, cut + 15, healed) for w in WORKERS}
    outcome = published()
    counts = _count(
        s,
        "net_rabbitmq_partitioned",
        "RabbitMQ (own host) <-> worker1..3: every packet dropped for 40 s, then the links return",
        "TCP keepalives and TCP_USER_TIMEOUT on the AMQP sockets "
        "(EVENTBUS_BROKER_NETWORK_TIMEOUT_SECONDS) end the silent connections, Celery's "
        "worker-heartbeat event no longer holds the event loop, and the remote-control queue "
        "is not exclusive to the dead connection RabbitMQ still holds: the workers reconnect "
        "once the links return; the events published meanwhile wait in PostgreSQL; wake-ups "
        "delivered to a dead connection are requeued and find nothing to claim",
        outcome,
    )
    noticed = _first(s, cut, BROKER_LOST)
    counts.detect_seconds = max((n for n in noticed.values() if n is not None), default=None)
    counts.recovery_seconds = max(back.values())
    counts.record()
    answers = dict(outcome.answers)
    reconnected = _first(s, healed, RECONNECTED)
    print(f"noticed {noticed}; reconnected {reconnected}; back {back}; handlers run while cut "
          f"{during}; {answers}, slowest {outcome.slowest:.1f} s; {counts}")  # fmt: skip
    counts.check()
    outcome.check_served()
    # each worker saw its connection die within the network timeout, not at the link's return
    assert all(n is not None and n < 30 for n in noticed.values()), noticed
    assert max(back.values()) <= BACK_WITHIN, back


def test_rabbitmq_cut_from_both_apis(s: RabbitNetStack) -> None:
    # Given the bus on RabbitMQ, publishing through both APIs
    published = s.publish_steady(plan(EVENTS, seed=53, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When both API hosts lose RabbitMQ for 20 s: their commits go on, their wake-ups cannot
    s.fault()
    cut = time.time()
    s.net.cut("rabbit", "api1")
    s.net.cut("rabbit", "api2")
    time.sleep(20)
    s.net.heal("rabbit")
    outcome = published()
    counts = _count(
        s,
        "net_rabbitmq_cut_from_apis",
        "RabbitMQ (own host) <-> api1, api2: every packet dropped for 20 s",
        "the event is committed before its wake-up is sent: a send into the silent link fails "
        "within TCP_USER_TIMEOUT (EVENTBUS_BROKER_NETWORK_TIMEOUT_SECONDS), is logged, and "
        "the sends after it fail at once for a second; the relay and the workers, which still "
        "reach RabbitMQ, wake the events",
        outcome,
    )
    counts.detect_seconds = _noticed(s, "api1", cut, ("send of",))
    counts.record()
    answers = dict(outcome.answers)
    print(f"{answers}, slowest {outcome.slowest:.1f} s; {counts}")
    counts.check()
    outcome.check_served()
