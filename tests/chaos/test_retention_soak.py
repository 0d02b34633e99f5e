"""The retention soak (``make soak-retention``, ~22 minutes; not part of ``make test``): a bus
publishing steadily for 20 minutes with partitions of one minute and a retention of five, so
the history turns over four times. Printed per minute: the history's size (tables and
indexes), its partitions, dead tuples, rows DELETEd, and the publish-to-completion p99.

It holds when, after the first retention window, the size and the p99 stay flat, no row of
the history is ever DELETEd (whole partitions are dropped), autovacuum keeps up (dead tuples
bounded), and every event published completed exactly once (the handlers' ledger, which
retention does not touch)."""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass

import pytest
from sqlalchemy import text

from bus.maintenance import retention
from bus.storage import partitions
from tests.chaos.harness import Stack, StackFactory, in_thread, plan

MINUTES = float(os.environ.get("EVENTBUS_SOAK_MINUTES", "20"))
RETENTION_MINUTES = float(os.environ.get("EVENTBUS_SOAK_RETENTION_MINUTES", "5"))
RATE = float(os.environ.get("EVENTBUS_SOAK_RATE", "400"))
SAMPLE_SECONDS = 60.0

pytestmark = [pytest.mark.retention_soak, pytest.mark.timeout(int(MINUTES * 60 + 600))]

HISTORY = """
SELECT count(*) AS partitions,
       coalesce(sum(pg_total_relation_size(c.oid)), 0) AS bytes,
       coalesce(sum(s.n_live_tup), 0) AS live,
       coalesce(sum(s.n_dead_tup), 0) AS dead,
       coalesce(sum(s.n_tup_del), 0) AS deleted
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE i.inhparent = 'system_events'::regclass
"""

QUEUE = """
SELECT (SELECT count(*) FROM event_queue), pg_total_relation_size('event_queue'),
       coalesce(s.n_dead_tup, 0)
FROM pg_stat_user_tables s WHERE s.relname = 'event_queue'
"""
"""The in-flight set: its rows (the backlog), its size with its indexes, its dead rows."""

LATENCY = """
SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY at - eventbus_id_time(event_id)),
       count(*)
FROM chaos_completions WHERE at >= now() - make_interval(secs => :window)
"""


@dataclass(frozen=True, slots=True)
class Sample:
    minute: int
    partitions: int
    mib: float
    live: int
    dead: int
    deleted: int
    p99_ms: float
    completed: int
    in_flight: int
    in_flight_mib: float
    in_flight_dead: int

    def line(self) -> str:
        return (
            f"minute {self.minute:2d}: {self.partitions:3d} partitions, {self.mib:8.1f} MiB, "
            f"{self.live:8d} live, {self.dead:7d} dead, {self.deleted} deleted, "
            f"p99 {self.p99_ms:7.0f} ms over {self.completed} completions; in flight "
            f"{self.in_flight} ({self.in_flight_mib:.1f} MiB, {self.in_flight_dead} dead)"
        )


def sample(s: Stack, minute: int) -> Sample:
    with s.runtime.engine.connect() as conn:
        parts, size, live, dead, deleted = conn.execute(text(HISTORY)).one()
        p99, done = conn.execute(text(LATENCY), {"window": SAMPLE_SECONDS}).one()
        queued, queue_bytes, queue_dead = conn.execute(text(QUEUE)).one()
    return Sample(
        minute,
        int(parts),
        int(size) / 2**20,
        int(live),
        int(dead),
        int(deleted),
        p99.total_seconds() * 1000 if p99 is not None else 0.0,
        int(done),
        int(queued),
        int(queue_bytes) / 2**20,
        int(queue_dead),
    )


def test_history_turns_over_at_a_flat_size(stack: StackFactory) -> None:
    s = stack(
        partition_minutes=1,
        partitions_ahead=3,
        retention_days=RETENTION_MINUTES / 1440,
        attempts_retention_days=RETENTION_MINUTES / 1440,
    )
    # The migration made days: a minute's span cannot be made over them, so they go (empty)
    with s.runtime.engine.begin() as conn:
        for p in partitions.partitions(conn):
            if not p.default:
                conn.execute(text(f"DROP TABLE {p.name}"))
    assert retention.make_ahead(s.runtime) == 5
    s.start_workers("w1", "w2")
    s.start_relay()
    count = int(RATE * MINUTES * 60)
    planned = plan(count, seed=19, failing=0.0, recovering=0.0, effect=0.0)
    ids: list[object] = []
    done = threading.Event()

    def publish() -> None:
        ids.extend(s.publish_inprocess(planned, batch=20, rate=RATE))
        done.set()

    s.threads.append(in_thread(publish))
    samples: list[Sample] = []
    started = time.monotonic()
    while not done.is_set():
        done.wait(max(0.0, started + (len(samples) + 1) * SAMPLE_SECONDS - time.monotonic()))
        samples.append(sample(s, len(samples) + 1))
        print(samples[-1].line(), flush=True)

    # every event completed exactly once (its history may be gone: the ledger is not)
    def completions() -> tuple[int, int]:
        with s.runtime.engine.connect() as conn:
            row = conn.execute(
                text("SELECT count(DISTINCT event_id), count(*) FROM chaos_completions")
            ).one()
        return int(row[0]), int(row[1])

    deadline = time.monotonic() + 120
    while completions()[0] < len(ids) and time.monotonic() < deadline:
        time.sleep(1.0)
    distinct, total = completions()
    print(f"published {len(ids)}, completed {distinct}, completions {total}", flush=True)
    assert distinct == len(ids) == count, "an event never completed"
    assert total == distinct, "an event completed twice"

    settled = [x for x in samples if x.minute > RETENTION_MINUTES + 2 and x.completed]
    assert len(settled) >= 3, samples
    sizes = [x.mib for x in settled]
    p99s = [x.p99_ms for x in settled]
    median_size, median_p99 = statistics.median(sizes), statistics.median(p99s)
    print(
        f"retention soak: size {min(sizes):.1f}-{max(sizes):.1f} MiB (median {median_size:.1f}), "
        f"p99 {min(p99s):.0f}-{max(p99s):.0f} ms (median {median_p99:.0f}), "
        f"deleted {max(x.deleted for x in samples)}, dead at most "
        f"{max(x.dead for x in settled)}; in flight at most "
        f"{max(x.in_flight for x in settled)} events, "
        f"{max(x.in_flight_mib for x in settled):.1f} MiB",
        flush=True,
    )
    assert all(x.deleted == 0 for x in samples), "a row of the history was DELETEd"
    assert max(sizes) <= 1.5 * median_size, sizes
    assert max(p99s) <= max(2 * median_p99, median_p99 + 1000), p99s
    assert all(x.dead <= max(x.live, 10_000) for x in settled), "autovacuum fell behind"
    # the in-flight set follows the backlog (a few seconds of events), not the history
    assert all(x.in_flight <= RATE * 30 for x in settled), [x.in_flight for x in settled]
    assert all(x.in_flight_mib <= 0.2 * x.mib for x in settled), "the in-flight set grew"
