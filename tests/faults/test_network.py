"""Network faults between hosts: partitions, half-open connections. Each scenario publishes
through both API hosts from the client host while a fault is injected, then counts the chaos
ledger (lost 0, completed twice 0, no 201 missing) and measures how long the bus took to
notice and to recover (a worker consuming again after the link returns: within 60 s).

Each records its figures in ``tests/chaos/last_run.json`` beside the chaos scenarios'
(``make reliability-doc`` writes them into docs/reliability.md)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest
import redis
from sqlalchemy import text

from tests.chaos.handlers import LEDGER_APPLICATION
from tests.chaos.harness import plan
from tests.faults.harness import PLACES, NetStack, Publishing
from tests.support.processes import BIN, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

EVENTS = 2000
RATE = 50.0  # 40 s of publishing: the fault and the link's return both fall inside it
LONG_EVENTS = 3500
"""70 s of publishing, for a cut of 30 s or more: work goes on arriving well after the link's
return, so a cut worker that consumes again has something to run (with 40 s, the publishing
ended as the link returned and the other workers drained the rest: no handler ran on the cut
worker in 60 s though it consumed again, 3 of 5 runs)."""
BACK_WITHIN = 60.0


def _bus(netstack: Any, proxied: bool = False, **settings: Any) -> NetStack:
    s: NetStack = netstack(proxied=proxied, **settings)
    s.start_api("api1")
    s.start_api("api2")
    s.start_workers("w1", "w2", "w3", pool="solo")
    s.start_relay()
    return s


def _runs_after(s: NetStack, worker: str, since: float) -> float | None:
    """When worker ``worker`` (a solo pool: its one process) first started a handler after
    ``since`` (epoch seconds), if it has."""
    pid = s.pid_of(worker)
    with s.runtime.engine.connect() as conn:
        at = conn.execute(
            text(
                "SELECT min(extract(epoch FROM at)) FROM chaos_ledger "
                "WHERE kind = 'start' AND pid = :pid AND at > to_timestamp(:since)"
            ),
            {"pid": pid, "since": since},
        ).scalar_one()
    return float(at) if at is not None else None


def _back_after(s: NetStack, worker: str, healed: float) -> float:
    """Seconds from the link's return until ``worker`` ran a handler again (the publishing
    goes on meanwhile, so there is work for it); its last log lines if it did not in time."""
    try:
        at = wait_for(
            lambda: _runs_after(s, worker, healed), BACK_WITHIN, f"{worker} to consume again"
        )
    except AssertionError as exc:
        # Its log records (a traceback's lines carry no time), and where its threads are
        records = [line for line in s.procs[worker].lines if line[:4].isdigit()][-30:]
        spy = BIN / "py-spy"
        stacks = subprocess.run(
            [str(spy), "dump", "--pid", str(s.pid_of(worker))],
            capture_output=True, text=True, check=False,
        ).stdout if spy.exists() else "(no py-spy)"  # fmt: skip
        log = "\n".join(records)
        clients = _redis_clients(s, PLACES[worker])
        raise AssertionError(
            f"{exc}; its last records:\n{log}\nits Redis clients: {clients}\nits threads:\n{stacks}"
        ) from None
    return round(at - healed, 1)


BROKER_LOST = ("Connection to broker lost", "Cannot connect to", "consumer: Connection")
DATABASE_LOST = ("OperationalError", "connection failed", "server closed the connection")


def _noticed(s: NetStack, name: str, since: float, needles: Sequence[str]) -> float | None:
    """Seconds from ``since`` (epoch) to the first log line of ``name`` after it naming one of
    ``needles`` (the process noticed the fault), if any."""
    for line in s.procs[name].lines:
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if at >= since and any(n in line for n in needles):
            return round(at - since, 1)
    return None


def _redis_clients(s: NetStack, host: str) -> list[str]:
    """What ``host``'s connections to Redis did last (``CLIENT LIST``: command, age, idle)."""
    client = redis.Redis.from_url(s.redis.local_url)
    try:
        listed = client.client_list()
    except redis.RedisError as exc:
        return [f"(CLIENT LIST failed: {exc})"]
    finally:
        client.close()
    keep = ("cmd", "age", "idle", "flags", "sub", "psub")
    return [
        " ".join(f"{k}={c.get(k)}" for k in keep)
        for c in listed
        if str(c.get("addr", "")).startswith(s.net.addr(host) + ":")
    ]


def _backends(s: NetStack, host: str) -> int:
    """PostgreSQL's backends serving the bus's connections from ``host`` (not the test
    handlers' own ledger connection, which sets no keepalives)."""
    with s.runtime.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE client_addr = :addr "
                    "AND application_name <> :ledger"
                ),
                {"addr": s.net.addr(host), "ledger": LEDGER_APPLICATION},
            ).scalar_one()
        )


def _runs_between(s: NetStack, worker: str, start: float, end: float) -> int:
    pid = s.pid_of(worker)
    with s.runtime.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM chaos_ledger WHERE kind = 'start' AND pid = :pid "
                    "AND at BETWEEN to_timestamp(:a) AND to_timestamp(:b)"
                ),
                {"pid": pid, "a": start, "b": end},
            ).scalar_one()
        )


def _count(s: NetStack, scenario: str, injected: str, holds_by: str, published: Publishing) -> Any:
    s.settle(len(published.answered), timeout=240)
    counts = s.count(
        scenario,
        injected,
        holds_by,
        answered=published.answered,
        cuts_expected=True,
        unanswered=published.gave_up,
    )
    return counts


def test_worker_cut_from_the_broker(netstack: Any) -> None:
    # Given the bus on its hosts, publishing through both APIs
    s = _bus(netstack)
    published = s.publish_steady(plan(LONG_EVENTS, seed=31, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When worker1's link to Redis is cut for 35 s (past the 25 s health check), then returns
    s.fault()
    cut = time.time()
    s.net.cut("worker1", "redis")
    time.sleep(35)
    s.net.heal("worker1")
    healed = time.time()
    back = _back_after(s, "w1", healed)
    during = _runs_between(s, "w1", cut + 5, healed)
    outcome = published()
    counts = _count(
        s,
        "net_worker_broker_partition",
        "worker1 <-> Redis: every packet dropped for 35 s, then the link returns",
        "claims live in PostgreSQL, not in the broker: the cut worker's batch commits; its "
        "unacknowledged wake-up comes back after the visibility timeout and costs a claim "
        "that finds nothing; Redis socket timeout 30 s and health check 25 s end the dead "
        "connection, kombu reconnects",
        outcome,
    )
    counts.recovery_seconds = back
    counts.detect_seconds = _noticed(s, "w1", cut, BROKER_LOST)
    counts.record()
    print(f"worker1 ran {during} handlers while cut from the broker; {counts}")
    counts.check()
    assert outcome.gave_up == 0, outcome
    assert back <= BACK_WITHIN


def test_api_cut_from_postgres(netstack: Any) -> None:
    # Given the bus on its hosts, publishing through both APIs, half the publishes with
    # Idempotency-Keys (each a transaction of its own), half without (the group commit's)
    s = _bus(netstack)
    s.unkeyed_every = 2
    published = s.publish_steady(plan(EVENTS, seed=32, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When api1's link to PostgreSQL is cut for 20 s mid-traffic (group commits in flight)
    s.fault()
    cut = time.time()
    s.net.cut("api1", "pg")
    time.sleep(20)
    s.net.heal("api1")
    healed = time.time()
    outcome = published()
    counts = _count(
        s,
        "net_api_postgres_partition",
        "api1 <-> PostgreSQL: every packet dropped for 20 s during group commits and keyed "
        "publishes (half each)",
        "TCP_USER_TIMEOUT and keepalives (EVENTBUS_DATABASE_NETWORK_TIMEOUT_SECONDS, 10 s) "
        "fail the cut connections: the API answers 503, the client retries with the same "
        "Idempotency-Key on the other API, whose insert of that key waits for the first "
        "transaction's end (a unique index) and answers the stored event",
        outcome,
    )
    # noticed: api1's first answer other than 201 (its 503); back: its first 201 after the link
    api1 = s.url_of("api1")
    counts.detect_seconds = outcome.first_end(api1, cut, ok=False)
    counts.recovery_seconds = outcome.first_end(api1, healed, ok=True)
    counts.record()
    answers = dict(outcome.answers)
    # An unkeyed publish whose group commit committed as its answer was lost, retried: stored
    # twice (at least once without a key, as the README says); every keyed one once
    twice = counts.published - EVENTS
    print(
        f"publishing: {answers}, retried {outcome.retried}, replayed {outcome.replayed}, "
        f"unkeyed publishes stored twice: {twice}"
    )
    counts.check()
    outcome.check_served()  # not a hang: every request answered within the read timeout
    assert answers.get("503", 0) > 0, answers  # the cut API said so, and the client retried


def test_half_open_broker_connection(netstack: Any) -> None:
    # Given the bus on its hosts, publishing
    s = _bus(netstack)
    published = s.publish_steady(plan(EVENTS, seed=33, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When worker1's established connections to Redis stop carrying packets (new ones work)
    s.fault()
    links = s.net.connections("worker1", "redis", 6379)
    assert links, "worker1 has no connection to Redis"
    for port, _pid in links:
        s.net.half_open("worker1", port)
    cut = time.time()
    # (a batch claimed before the cut may still be running: what counts is a later claim)
    back = _back_after(s, "w1", cut + 5) + 5
    outcome = published()
    s.net.heal("worker1")
    counts = _count(
        s,
        "net_half_open_broker",
        "worker1's established Redis connections silently drop every packet (new ones work)",
        "TCP keepalives and TCP_USER_TIMEOUT on every Redis socket "
        "(EVENTBUS_BROKER_NETWORK_TIMEOUT_SECONDS, 10 s) fail the silent connections, a "
        "reply that never comes or data never acknowledged; kombu connects again",
        outcome,
    )
    counts.recovery_seconds = back
    counts.detect_seconds = _noticed(s, "w1", cut, BROKER_LOST)
    counts.record()
    counts.check()
    assert back <= BACK_WITHIN


def test_worker_cut_from_postgres_mid_batch(netstack: Any) -> None:
    # Given the bus on its hosts, publishing
    s = _bus(netstack)
    published = s.publish_steady(plan(LONG_EVENTS, seed=34, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When worker1's link to PostgreSQL is cut for 30 s while it runs batches (a COMMIT may be
    # in flight: its outcome unknown to the worker)
    wait_for(lambda: _runs_after(s, "w1", time.time() - 0.5), 30, "worker1 running")
    s.fault()
    cut = time.time()
    s.net.cut("worker1", "pg")
    # the server's side: how long worker1's backends outlive the link (its keepalives and
    # tcp_user_timeout, set by the bus through the startup options, end them)
    orphans_gone = wait_for(lambda: _backends(s, "worker1") == 0 and time.time(), 29, "orphans")
    time.sleep(max(0.0, cut + 30 - time.time()))
    s.net.heal("worker1")
    healed = time.time()
    back = _back_after(s, "w1", healed)
    outcome = published()
    print(f"worker1's backends ended by the server {orphans_gone - cut:.1f} s after the cut")
    counts = _count(
        s,
        "net_worker_postgres_partition",
        "worker1 <-> PostgreSQL: every packet dropped for 30 s mid-batch",
        "the worker's TCP_USER_TIMEOUT and keepalives fail its statement or COMMIT within "
        "~10 s; the server's own keepalives end the orphaned backend, rolling its batch back "
        "and freeing the history rows it locked; its claims end when its heartbeats stop "
        "reaching the database and the events run again elsewhere, counted",
        outcome,
    )
    counts.detect_seconds = _noticed(s, "w1", cut, DATABASE_LOST)
    counts.recovery_seconds = back
    counts.record()
    counts.check()
    assert back <= BACK_WITHIN


def test_relay_cut_from_everything(netstack: Any) -> None:
    # Given the bus on its hosts, publishing
    s = _bus(netstack)
    published = s.publish_steady(plan(EVENTS, seed=35, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When the relay's host loses its network for 30 s (the maintenance: wake-ups, the set's
    # vacuum, dead workers' claims), and a worker is SIGKILLed meanwhile
    s.fault()
    cut = time.time()
    s.net.isolate("relay")
    s.kill("w3")
    time.sleep(30)
    s.net.heal("relay")
    outcome = published()
    counts = _count(
        s,
        "net_relay_isolated",
        "the relay host's every packet dropped for 30 s; worker3 SIGKILLed meanwhile",
        "the maintenance is a second net only: every worker polls for ready events and ends "
        "the claims of workers whose heartbeats stopped, so the cut relay is not missed; its "
        "own connections give up in ~10 s and are made again when the link returns",
        outcome,
    )
    counts.detect_seconds = _noticed(
        s, "relay", cut, (*DATABASE_LOST, *BROKER_LOST, "failed; next try")
    )
    counts.record()
    counts.check()
    assert outcome.gave_up == 0, outcome.answers
    assert s.procs["relay"].popen.poll() is None, "the relay died of the partition"


def test_api_cut_from_the_broker(netstack: Any) -> None:
    # Given the bus on its hosts, publishing
    s = _bus(netstack)
    published = s.publish_steady(plan(EVENTS, seed=36, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When api1's link to Redis is cut for 20 s: its publishes commit, their wake-ups fail
    s.fault()
    cut = time.time()
    s.net.cut("api1", "redis")
    time.sleep(20)
    s.net.heal("api1")
    outcome = published()
    counts = _count(
        s,
        "net_api_broker_partition",
        "api1 <-> Redis: every packet dropped for 20 s after its commits",
        "the event is committed before its wake-up is sent: a wake-up lost costs nothing, the "
        "workers' 1 s polls and the maintenance find the ready events; the broker socket's "
        "TCP_USER_TIMEOUT (EVENTBUS_BROKER_NETWORK_TIMEOUT_SECONDS) bounds how long a send "
        "holds the publish",
        outcome,
    )
    counts.detect_seconds = _noticed(s, "api1", cut, (*BROKER_LOST, "send of", "Timeout"))
    counts.record()
    counts.check()
    outcome.check_served()


def test_api_host_cut_from_its_clients(netstack: Any) -> None:
    # Given the bus on its hosts, publishing through both APIs
    s = _bus(netstack)
    published = s.publish_steady(plan(EVENTS, seed=37, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When the client host loses api1 for 20 s (a load balancer's target gone dark)
    s.fault()
    cut = time.time()
    s.net.cut("client", "api1")
    time.sleep(20)
    s.net.heal("client")
    healed = time.time()
    outcome = published()
    counts = _count(
        s,
        "net_api_cut_from_clients",
        "client <-> api1: every packet dropped for 20 s",
        "a publish is stored once per Idempotency-Key: the client's retry on api2 of a request "
        "api1 may have committed is answered with the stored event",
        outcome,
    )
    # noticed: the client's first failed request to api1 (its connect timeout, 3 s); back: its
    # first 201 from api1 after the link returns
    api1 = s.url_of("api1")
    counts.detect_seconds = outcome.first_end(api1, cut, ok=False)
    counts.recovery_seconds = outcome.first_end(api1, healed, ok=True)
    counts.record()
    counts.check()
    assert outcome.gave_up == 0, outcome.answers


def test_clocks_skewed_on_two_workers(netstack: Any) -> None:
    # Given the bus on its hosts, worker2's clock and the relay's 30 s ahead, worker3's 30 s
    # behind
    s: NetStack = netstack()
    s.skews.update(w2="+30s", w3="-30s", relay="+30s")
    s.start_api("api1")
    s.start_api("api2")
    s.start_workers("w1", "w2", "w3", pool="solo")
    s.start_relay()
    # When events are published and run, some failing (retries are due by a clock)
    published = s.publish_steady(plan(EVENTS, seed=38, effect=0.05), rate=RATE)
    outcome = published()
    counts = _count(
        s,
        "net_clock_skew",
        "the wall clocks of worker2 and the relay 30 s ahead, worker3's 30 s behind "
        "(faketime), for the whole run",
        "claims, heartbeats and retry times are compared with the database's clock, or within "
        "one worker's own; a run is single by the batch's row locks whatever a clock says",
        outcome,
    )
    counts.record()
    counts.check()
    assert outcome.gave_up == 0, outcome.answers
    for name in ("w2", "w3"):
        assert _runs_after(s, name, 0) is not None, f"{name} never ran a handler"


def test_half_open_postgres_connections_in_the_api_pool(netstack: Any) -> None:
    # Given the bus on its hosts, publishing through both APIs
    s = _bus(netstack)
    published = s.publish_steady(plan(EVENTS, seed=39, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When every established connection of api1's pool to PostgreSQL stops carrying packets
    # (new ones work): a NAT or a firewall forgot them
    s.fault()
    cut = time.time()
    links = s.net.connections("api1", "pg", 5432)
    assert links, "api1 has no connection to PostgreSQL"
    for port, _pid in links:
        s.net.half_open("api1", port)
    outcome = published()
    counts = _count(
        s,
        "net_half_open_postgres_api",
        f"api1's {len(links)} pooled PostgreSQL connections silently drop every packet (new "
        "ones work)",
        "the pool pings a connection idle for over a second before lending it, and "
        "TCP_USER_TIMEOUT and keepalives (EVENTBUS_DATABASE_NETWORK_TIMEOUT_SECONDS) fail one "
        "caught mid-statement: that request answers 503 and the client retries elsewhere "
        "with the same Idempotency-Key",
        outcome,
    )
    # noticed: the longest a request waited (a statement on a silent connection); back: api1's
    # first 201 after its first 503
    api1 = s.url_of("api1")
    counts.detect_seconds = round(outcome.slowest, 1)
    failed = outcome.first_end(api1, cut, ok=False)
    if failed is not None:
        counts.recovery_seconds = outcome.first_end(api1, cut + failed, ok=True)
    counts.record()
    counts.check()
    outcome.check_served()


def test_postgres_restarted_behind_a_partition(netstack: Any) -> None:
    # Given the bus on its hosts, publishing
    s = _bus(netstack)
    published = s.publish_steady(plan(EVENTS, seed=40, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When PostgreSQL's host is cut from every other host, restarted while cut (crash
    # recovery: every connection the others hold is gone on its side), and the link returns
    s.fault()
    cut = time.time()
    s.net.isolate("pg")
    time.sleep(5)
    s.pg.restart()
    time.sleep(10)
    s.net.heal("pg")
    healed = time.time()
    back = _back_after(s, "w1", healed)
    outcome = published()
    counts = _count(
        s,
        "net_postgres_restart_partitioned",
        "PostgreSQL's host cut from all for 15 s, its postmaster SIGKILLed and restarted while cut",
        "connections the restarted server no longer knows are reset when the link returns "
        "(or time out first: EVENTBUS_DATABASE_NETWORK_TIMEOUT_SECONDS); pools reconnect, "
        "the API answers 503 meanwhile, claims and outcomes roll back with the lost "
        "transactions and run again counted",
        outcome,
    )
    counts.recovery_seconds = back
    counts.detect_seconds = _noticed(s, "w1", cut, DATABASE_LOST)
    counts.record()
    counts.check()
    outcome.check_served(timeouts=False)


def test_slow_network_on_every_link(netstack: Any) -> None:
    # Given the bus on its hosts with every link into PostgreSQL, Redis and the APIs through a
    # proxy, publishing through both APIs for 80 s
    s = _bus(netstack, proxied=True)
    published = s.publish_steady(plan(4000, seed=41, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When, for a minute, every link holds each chunk 100-300 ms each way and every host
    # drops 5% of the packets it receives
    s.fault()
    slowed = time.time()
    s.slow((0.1, 0.3), loss=0.05)
    time.sleep(60)
    s.slow(None)
    s.net.heal()
    healed = time.time()
    during = {w: _runs_between(s, w, slowed, healed) for w in ("w1", "w2", "w3")}
    back = max(_back_after(s, w, healed) for w in ("w1", "w2", "w3"))
    outcome = published()
    counts = _count(
        s,
        "net_slow_links",
        "every link 100-300 ms each way per chunk (jittered, a proxy) and 5% of packets "
        "dropped at every host (iptables), for 60 s",
        "nothing waits on a fixed short deadline: a request's statements, a claim and a batch "
        "just take longer; TCP retransmits the losses well inside TCP_USER_TIMEOUT (10 s)",
        outcome,
    )
    counts.recovery_seconds = back
    counts.detect_seconds = round(outcome.slowest, 1)  # the longest a request waited
    counts.record()
    answers = dict(outcome.answers)
    slow = sorted(t for at, t, _, _ in outcome.requests if slowed <= at < healed)
    print(
        f"handlers run while slow: {during}; publishing: {answers}; {len(slow)} requests "
        f"while slow, p50 {slow[len(slow) // 2]:.2f} s, p99 {slow[len(slow) * 99 // 100]:.2f} s"
    )
    counts.check()
    outcome.check_served()  # no request held past 30 s
    assert all(during.values()), f"a worker ran nothing for the slow minute: {during}"
    assert back <= BACK_WITHIN


@pytest.mark.parametrize("delivered", [True, False], ids=["commit_delivered", "commit_lost"])
def test_worker_cut_from_postgres_mid_commit(netstack: Any, delivered: bool) -> None:
    # Given the bus on its hosts, PostgreSQL reached through a proxy on its host, publishing
    s = _bus(netstack, proxied=True)
    published = s.publish_steady(plan(LONG_EVENTS, seed=42 + delivered, effect=0.05), rate=RATE)
    s.wait_processed(200)
    # When worker1's link to PostgreSQL is cut at the instant of a batch's COMMIT: the server
    # commits it and its answer is lost, or the COMMIT itself is lost (the transaction stays
    # open, its rows locked, until the server loses the connection 10 s later); 30 s, then back
    sprung = s.trap_commit("worker1", deliver=delivered)
    sprung(30)
    s.fault()
    cut = time.time()
    s.net.cut("worker1", "pg")
    time.sleep(30)
    s.net.heal("worker1")
    healed = time.time()
    back = _back_after(s, "w1", healed)
    outcome = published()
    what = "committed, its answer lost" if delivered else "lost (never reached the server)"
    counts = _count(
        s,
        f"net_worker_postgres_mid_commit_{'delivered' if delivered else 'lost'}",
        f"worker1 <-> PostgreSQL cut at a batch's COMMIT, {what}; 30 s",
        "the outcome of a COMMIT whose answer never came is read from the database, not "
        "guessed: the batch's events are claimed again only if its claims are still there "
        "(a lost COMMIT rolled back) and skipped if they are done (a delivered one); the "
        "worker's TCP keepalives end its connection in ~10 s",
        outcome,
    )
    counts.detect_seconds = _noticed(s, "w1", cut, DATABASE_LOST)
    counts.recovery_seconds = back
    counts.record()
    counts.check()
    assert outcome.gave_up == 0, outcome.answers
    assert back <= BACK_WITHIN
