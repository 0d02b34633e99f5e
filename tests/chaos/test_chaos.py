"""Nothing lost, nothing completed twice: 2,000 events per scenario through a real bus while a
fault is injected, then counted from the database and the handler's ledger.

Each scenario records its figures in ``tests/chaos/last_run.json``; ``python -m
tests.chaos.report`` writes them into docs/reliability.md.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import text

from bus.maintenance import retention
from bus.storage import partitions
from tests.chaos.harness import StackFactory, in_thread, plan, plan_ordered
from tests.support.processes import wait_for
from tests.support.servers import PostgresCluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

EVENTS = 2000
ACKS_AND_CLAIM = (
    "the claim (the in-flight set's row, committed before handlers run) and the batch's lock "
    "of each history row keep a run single; a crash rolls the attempt back, its claims are "
    "ended (the main process, or a live worker after 3 missed heartbeats) and each event runs "
    "again alone, its attempt counted before it starts"
)


def test_worker_killed_mid_handler(stack: StackFactory) -> None:
    # Given two workers and a relay, and events of which some pause after an outside effect
    s = stack()
    s.start_workers("w1", "w2")
    s.start_relay()
    planned = plan(EVENTS, seed=1, effect=0.05, slow_effects=24, sleep_after_effect=0.3)
    # When the events are published and worker w1 is SIGKILLed twice, each time while one of its
    # handlers has made its outside effect and not yet returned
    published = s.publish_in_background(planned)
    for _ in range(2):
        s.wait_for_effect_in_flight("w1")
        s.kill("w1")
        s.start_workers("w1")
    ids = published()
    s.settle(len(ids))
    # Then nothing is lost or completed twice; the killed attempts ran again, and their
    # outside effect with them, unless it was keyed on the event id
    counts = s.count(
        "worker_sigkill",
        "whole worker (main + pool) SIGKILLed mid-handler, twice, and restarted",
        f"{ACKS_AND_CLAIM}; heartbeats every 1 s here",
        answered=ids,
        cuts_expected=True,
    )
    counts.record()
    counts.check()
    assert counts.restarted_after_fault >= 2
    assert counts.outside_effect_repeated >= 2  # the window the docs describe


def test_ordered_entities_with_failures_and_a_worker_killed(stack: StackFactory) -> None:
    # Given two workers of two processes each and a relay, on an ordered handler
    s = stack()
    s.start_workers("w1", "w2", concurrency=2)
    s.start_relay()
    # When 2,000 events about 40 entities of two tenants are published, 10% failing once,
    # and worker w1 is SIGKILLed twice while one of its handlers is mid-effect
    planned = plan_ordered(EVENTS, seed=14, entities=40, slow_effects=30)
    published = s.publish_in_background(planned)
    for _ in range(2):
        s.wait_for_effect_in_flight("w1")
        s.kill("w1")
        s.start_workers("w1", concurrency=2)
    ids = published()
    s.settle(len(ids))
    # Then nothing is lost or completed twice, and every entity's events completed in the
    # order the bus committed them
    counts = s.count(
        "ordered_worker_sigkill",
        "ordered handler (40 entities, 10% failing once), whole worker SIGKILLed mid-handler "
        "twice and restarted",
        "the claim is committed before handlers run and the batch locks each history row; an "
        "event is claimable only when no earlier event of its entity is in flight; a dead "
        "worker's claims end after 3 missed heartbeats and run again counted as lost",
        answered=ids,
        cuts_expected=True,
    )
    counts.out_of_order = s.out_of_order()
    counts.record()
    counts.check()
    assert counts.restarted_after_fault >= 2


def test_pool_child_killed(stack: StackFactory) -> None:
    # Given two prefork workers
    s = stack()
    s.start_workers("w1", "w2")
    s.start_relay()
    planned = plan(EVENTS, seed=2, slow_effects=24, sleep_after_effect=0.3)
    published = s.publish_in_background(planned)
    # When their pool processes are SIGKILLed eight times while they work, as an OOM killer
    # would: three times while a handler is surely running, five times at random
    s.wait_processed(200)
    for n in range(8):
        worker = f"w{n % 2 + 1}"
        if n < 3:
            s.wait_for_effect_in_flight(worker)
        assert s.kill_pool_child(worker)
        time.sleep(0.6)
    ids = published()
    s.settle(len(ids))
    counts = s.count(
        "pool_child_oom",
        "a pool process SIGKILLed 8 times (the worker's main process lives)",
        f"{ACKS_AND_CLAIM}; the main process ends a dead child's claims at once and sends its "
        "message again as a wake-up",
        answered=ids,
        cuts_expected=True,
    )
    counts.record()
    counts.check()
    assert counts.restarted_after_fault >= 3


def test_redis_killed_without_persistence(stack: StackFactory) -> None:
    # Given a bus on a Redis without persistence
    s = stack()
    s.start_workers("w1", "w2")
    s.start_relay()
    published = s.publish_in_background(plan(EVENTS, seed=3))
    # When Redis is SIGKILLed mid-stream, every queued message with it, and comes back empty
    s.wait_processed(600)
    s.kill_redis()
    time.sleep(1.0)
    s.redis.start()
    ids = published()
    s.settle(len(ids))
    counts = s.count(
        "redis_lost",
        "Redis (no AOF) SIGKILLed mid-stream (queued and unacknowledged messages gone), "
        "restarted empty after 1 s while publishing went on",
        "PostgreSQL is the outbox and its in-flight set the queue: Redis held wake-ups only; "
        "the workers' polls (1 s) and the relay wake the modules again; workers reconnect",
        answered=ids,
        cuts_expected=True,
    )
    counts.record()
    counts.check()


def test_redis_unreachable_while_the_api_publishes(stack: StackFactory) -> None:
    # Given the API, two workers and a relay on a Redis of the scenario's own
    s = stack()
    s.start_workers("w1", "w2")
    s.start_relay()
    s.start_api()
    # When 2,000 events are POSTed and Redis dies after the 500th request and is back, empty,
    # at the 1,300th
    outcome = s.publish_http(
        plan(EVENTS, seed=4), concurrency=6, at={500: s.kill_redis, 1300: s.start_redis}
    )
    # Then every publish was answered 201
    assert outcome.unanswered == 0 and not outcome.errors, outcome
    s.settle(len(outcome.answered))
    counts = s.count(
        "redis_down_api",
        "Redis (no AOF) SIGKILLed during HTTP publishing; 800 POSTs while it was down",
        "the INSERT commits before the send; a wake-up that failed or was lost costs nothing: "
        "the workers' polls find the events once Redis is back",
        answered=outcome.answered,
        cuts_expected=True,
    )
    counts.record()
    counts.check()


def test_postgres_restarted_while_workers_run(stack: StackFactory, pg: PostgresCluster) -> None:
    # Given workers and a relay processing 2,000 events
    s = stack()
    s.start_workers("w1", "w2")
    s.start_relay()
    planned = plan(EVENTS, seed=5, slow_effects=24, sleep_after_effect=0.3)
    ids = s.publish_inprocess(planned, rate=None)
    # When PostgreSQL is SIGKILLed while a handler is between its outside effect and its commit,
    # and restarted (crash recovery)
    s.wait_processed(300)
    s.wait_for_effect_in_flight("w1")
    s.fault()
    pg.kill()
    time.sleep(1.0)
    pg.start()
    s.settle(len(ids))
    counts = s.count(
        "postgres_restart",
        "PostgreSQL postmaster SIGKILLed mid-handler, restarted after 1 s (crash recovery)",
        "one transaction per attempt (claim, handler, status): a crash rolls it back; a "
        "database error retries the message with a backoff, spending no attempt; "
        "a dead pooled connection is replaced (pinged when idle over 1 s; else its first "
        "statement fails and the message is retried)",
        answered=ids,
        cuts_expected=True,
    )
    counts.record()
    counts.check()
    assert counts.restarted_after_fault >= 1


def test_relay_killed_mid_batch_with_two_relays(stack: StackFactory) -> None:
    # Given 2,000 committed events whose sends never happened, workers, and two relays
    s = stack()
    s.start_workers("w1", "w2")
    ids = s.insert_unsent(plan(EVENTS, seed=6))
    s.start_relay("r1")
    s.start_relay("r2")
    # When relay r1 is SIGKILLed three times at random moments of its work, restarted each time
    rng = random.Random(6)
    for _ in range(3):
        time.sleep(rng.uniform(0.2, 0.8))
        s.kill("r1")
        s.start_relay("r1")
    s.settle(len(ids))
    counts = s.count(
        "relay_kill",
        "two relays at once; one SIGKILLed 3 times mid-batch and restarted",
        "the relay only wakes modules (a bounded wake-up each, nothing stamped per event), and "
        "the workers' polls find what no message woke them for",
        answered=ids,
        cuts_expected=False,
    )
    counts.record()
    counts.check()


def test_api_killed_between_commit_and_send(stack: StackFactory) -> None:
    # Given an API that SIGKILLs itself right after the commit of its 300th publish, before
    # sending it (the real app; tests/chaos/api_dies_after_commit.py), restarted when it dies
    s = stack()
    s.start_workers("w1", "w2")
    s.start_relay()
    dying = [sys.executable, "-m", "tests.chaos.api_dies_after_commit", "api"]
    deaths = 2
    s.start_api(argv=dying, CHAOS_DIE_AFTER_SENDS="300")
    done = threading.Event()

    def restart_when_dead() -> None:
        nonlocal deaths
        while not done.is_set():
            if s.procs["api"].popen.poll() is not None:
                s.fault()
                deaths -= 1
                s.start_api(argv=dying if deaths > 0 else None, CHAOS_DIE_AFTER_SENDS="400")
            time.sleep(0.05)

    watcher = threading.Thread(target=restart_when_dead, daemon=True)
    watcher.start()
    # When 2,000 events are POSTed through it
    try:
        # (100 more than the others: some requests die unanswered)
        outcome = s.publish_http(plan(EVENTS + 100, seed=7), concurrency=6)
    finally:
        done.set()
        watcher.join(60)
    assert deaths == 0, "the API did not die twice"
    assert not outcome.errors, outcome
    s.settle(len(outcome.answered))
    # Then every answered event, and every committed one nobody was told about, is processed
    counts = s.count(
        "api_kill_after_commit",
        "API SIGKILLed twice between a publish's commit and its send (requests in flight "
        "unanswered)",
        "the event row is the outbox: a wake-up never sent is made up for by the workers' polls "
        "(1 s) and the relay",
        answered=outcome.answered,
        cuts_expected=False,
        unanswered=outcome.unanswered,
    )
    counts.record()
    counts.check()
    assert outcome.unanswered >= 2


def test_poison_event_ends_failed(stack: StackFactory) -> None:
    # Given events of which two kill the process that runs them, every time
    s = stack(retry_max_attempts=3)
    s.start_workers("w1", "w2")
    s.start_relay()
    ids = s.publish_inprocess(plan(EVENTS, seed=8, poison=2))
    # When they are processed
    s.settle(len(ids), timeout=150)
    # Then each poison event ended failed after its attempts, and the rest went on
    counts = s.count(
        "poison",
        "2 events whose handler SIGKILLs its pool process on every attempt",
        "the delivery after a lost one counts its attempt before running the handler, so the "
        "crash loop ends after EVENTBUS_RETRY_MAX_ATTEMPTS counted runs (+1 uncounted)",
        answered=ids,
        cuts_expected=False,
    )
    counts.record()
    counts.check()
    assert counts.failed_as_scripted >= 2
    # 1 uncounted run + 3 counted ones per poison event, each cut short, and no other
    assert counts.cut_short == 2 * 4


def test_handler_slower_than_the_visibility_timeout(stack: StackFactory) -> None:
    # Given workers, and six events whose handler takes 1.8 s
    s = stack()
    s.start_workers("w1", "w2")
    s.start_relay()
    published = s.publish_in_background(plan(EVENTS, seed=9, slow=6, slow_seconds=1.8))
    # When another app on the same Redis DB sweeps with a 1 s visibility timeout (the shortest
    # VT on a Redis DB wins), putting every message unacknowledged for 1 s back on its queue
    stop = threading.Event()
    sweeps = 0

    def sweep() -> None:
        nonlocal sweeps
        with Connection(s.redis.url, transport_options={"visibility_timeout": 1}) as conn:
            channel = conn.default_channel
            while not stop.wait(0.5):
                channel.qos.restore_visible(num=1000, interval=1)
                sweeps += 1

    sweeper = threading.Thread(target=sweep, daemon=True)
    s.fault()
    sweeper.start()
    try:
        ids = published()
        s.settle(len(ids))
    finally:
        stop.set()
        sweeper.join(10)
    # Then the slow handlers ran once each: a redelivered copy is a wake-up, and its claim finds
    # the running events claimed (and their history rows locked)
    counts = s.count(
        "visibility_timeout",
        "6 handlers of 1.8 s under a 1 s visibility timeout (a second app's sweep on the same "
        "Redis DB re-queued their unacknowledged messages while they ran)",
        "a message is a wake-up: a redelivered copy claims what is ready, and a running event "
        "is claimed (its history row locked) for its whole attempt; one VT per Redis DB",
        answered=ids,
        cuts_expected=False,
    )
    counts.record()
    counts.check()
    # (each slow message is swept back at least once while its handler runs, unless a sweep
    # meets kombu's restore mutex; the copies claimed nothing running)
    assert sweeps > 5


def test_poison_event_that_kills_the_whole_worker(stack: StackFactory) -> None:
    # Given solo-pool workers, restarted whenever they die (as systemd or Kubernetes would), a
    # relay, and two events whose handler kills the process running it: here
    # the worker itself, so no main process survives to report the loss
    s = stack(retry_max_attempts=2)
    s.start_workers("w1", "w2", pool="solo")
    s.start_relay()
    supervisor = s.supervise("w1", "w2")
    published = s.publish_in_background(plan(EVENTS, seed=10, poison=2))
    # When they are processed
    try:
        ids = published()
        s.settle(len(ids), timeout=150)
    finally:
        restarts = supervisor()
    # Then each poison event ran once plus its counted attempts, and ended failed: a dead
    # worker's claims end after 3 missed heartbeats and its events are claimed as lost
    counts = s.count(
        "poison_whole_worker",
        "2 events whose handler SIGKILLs its solo-pool worker on every attempt; workers "
        "restarted by a supervisor",
        "a dead worker's claims end after 3 missed heartbeats (1 s here) and each event is "
        "claimed as lost: its attempt is counted before it runs",
        answered=ids,
        cuts_expected=False,
    )
    counts.record()
    counts.check()
    assert counts.failed_as_scripted >= 2
    assert counts.cut_short == 2 * (1 + 2), counts
    assert restarts == 2 * (1 + 2)


def test_worker_killed_in_the_middle_of_a_batch(stack: StackFactory) -> None:
    # Given two prefork workers, and events committed 300 at a time, so each message carries
    # about 100 ids of one module, some of whose handlers pause after an outside effect
    s = stack()
    s.start_workers("w1", "w2")
    s.start_relay()
    planned = plan(EVENTS, seed=11, effect=0.05, slow_effects=30, sleep_after_effect=0.3)
    published = s.publish_in_background(planned, batch=300, rate=400.0)
    # When a pool process is SIGKILLed twice, and a whole worker once, each time while a
    # handler of a batch has made its outside effect and not yet returned
    for _ in range(2):
        s.wait_for_effect_in_flight("w2")
        assert s.kill_pool_child("w2")
        time.sleep(0.6)
    s.wait_for_effect_in_flight("w1")
    s.kill("w1")
    s.start_workers("w1")
    ids = published()
    s.settle(len(ids))
    # Then nothing is lost or completed twice: the claims of the batch the process died in
    # ended, and each of its events ran again alone, its attempt counted before it ran
    counts = s.count(
        "worker_killed_mid_batch",
        "batches of ~100 events: a pool process SIGKILLed twice and a whole worker once, each "
        "time mid-batch",
        f"{ACKS_AND_CLAIM}; one commit per batch, so a death rolls the whole batch back",
        answered=ids,
        cuts_expected=True,
    )
    counts.record()
    counts.check()
    assert counts.restarted_after_fault >= 3
    ended = "claims of dead worker processes ended"
    assert any(ended in p.output for p in s.every_proc), "no claim of a dead process ended"


def test_poison_event_inside_a_batch(stack: StackFactory) -> None:
    # Given events committed 200 at a time, two of which, among the others of their module,
    # kill the pool process that runs them, every time
    s = stack(retry_max_attempts=3)
    s.start_workers("w1", "w2")
    s.start_relay()
    planned = plan(EVENTS, seed=12, poison=2, poison_module="orders")
    ids = s.publish_inprocess(planned, batch=200, rate=None)
    # When they are processed
    s.settle(len(ids), timeout=150)
    # Then each poison event ended failed after its attempts; the events of its batch that ran
    # before it in the same process were rolled back with it and ran again once, alone: each
    # completed exactly once, none failed for it
    counts = s.count(
        "poison_in_batch",
        "2 events among batches of ~67 of their module whose handler SIGKILLs its pool "
        "process on every attempt",
        "a lost batch is split into one message per event, each counted before it runs: the "
        "poison's crash loop ends after EVENTBUS_RETRY_MAX_ATTEMPTS counted runs, its "
        "batchmates run again alone",
        answered=ids,
        cuts_expected=False,
    )
    counts.record()
    counts.check()
    assert counts.failed_as_scripted >= 2
    assert counts.cut_by_poison_batchmate >= 1, counts  # the poison did share a batch
    # 3 counted runs per poison event, each cut short, plus its first, uncounted one unless the
    # other poison event of its batch killed the batch before its turn
    assert 2 * 3 <= counts.cut_short - counts.cut_by_poison_batchmate <= 2 * 4, counts


DROPPED_COPY = """
CREATE TABLE IF NOT EXISTS chaos_dropped_events (LIKE system_events);
TRUNCATE chaos_dropped_events;
"""


def test_old_day_dropped_while_workers_finish_it(
    stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a day 45 days old whose 600 events are still to run (sent by the relay), and 1,400
    # events published now; the relay's own retention is off, the scenario's runs beside it
    s = stack(retention_days=36500.0)
    old_day = datetime.now(UTC).date() - timedelta(days=45)
    with s.runtime.engine.begin() as conn:
        conn.execute(text(DROPPED_COPY))
        partitions.make_day(conn, old_day)
    planned = plan(EVENTS, seed=13)
    old, new = planned[:600], planned[600:]
    old_ids = s.insert_unsent(old, at=partitions.midnight(old_day) + timedelta(hours=9))
    assert {partitions.day_name(old_day)} == s.homes(old_ids)
    # The drop keeps a copy of the rows it drops, in the dropping transaction, for the count
    s.history = "(SELECT * FROM system_events UNION ALL SELECT * FROM chaos_dropped_events) AS e"
    drop = partitions.drop

    def drop_keeping_a_copy(
        connection: Any, partition: partitions.Partition, before: Any = None
    ) -> tuple[int, int]:
        name = partition.name
        connection.execute(text(f"LOCK TABLE {name} IN SHARE MODE"))
        waiting = f"SELECT count(*) FROM {name} WHERE {partitions.IN_FLIGHT}"  # noqa: S608
        if connection.execute(text(waiting)).scalar_one() == 0:
            connection.execute(text(f"INSERT INTO chaos_dropped_events SELECT * FROM {name}"))  # noqa: S608
        return drop(connection, partition, before=before)

    monkeypatch.setattr(partitions, "drop", drop_keeping_a_copy)
    keeper = retention.Retention(
        SimpleNamespace(
            settings=s.settings.model_copy(update={"retention_days": 30.0}),
            sessions=s.runtime.sessions,
        )
    )
    passes = {"held": 0, "failed": 0, "dropped": 0}

    def retain() -> None:
        while not s.stopping.is_set() and not passes["dropped"]:
            try:
                passes["dropped" if keeper.run() else "held"] += 1
            except Exception:
                passes["failed"] += 1  # a lock wait ran out: the next pass tries again
            time.sleep(0.1)

    s.threads.append(in_thread(retain))
    # When workers run them all while retention passes every 0.1 s
    s.start_workers("w1", "w2")
    s.start_relay()
    new_ids = s.publish_inprocess(new, batch=50, rate=300.0)
    wait_for(lambda: passes["dropped"] > 0, 150, "the old day to be dropped", interval=0.2)
    s.settle(len(new_ids))
    counts = s.count(
        "history_drop",
        "a 45-day-old partition of 600 events in flight, with retention passing every 0.1 s "
        "while workers finish them",
        "retention drops a day only when none of its events is in flight, under a SHARE lock "
        "taken before it looks; a message for a dropped event finds no row and is let go",
        answered=[*old_ids, *new_ids],
        cuts_expected=False,
    )
    counts.record()
    counts.check()
    # Then the day went only after its last event finished, all 600 with it
    assert passes["held"] >= 1, passes
    assert partitions.day_name(old_day) not in s.partition_names()
    assert s.count_where("true") == len(new_ids)
    assert counts.processed + counts.failed_as_scripted == EVENTS
