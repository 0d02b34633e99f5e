"""``bench.history``'s seeding at a tiny size: day partitions attached with their indexes, ids
naming their ``created_at``, the kept counts exact; and the shape of its last line.

The whole ``make bench-history --quick`` takes minutes (two end-to-end phases); only the part
that writes to the history is run here, in a few seconds.
"""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
import pytest

from bench.history import headline, human_rows, seed
from bench.stack import Database

pytestmark = pytest.mark.integration

LAST_LINE = re.compile(
    r"^history: batched \d+\.\d\d x, single \d+\.\d\d x, list p99 \d+\.\d ms, "
    r"get p99 \d+\.\d ms at \d+(\.\d)?[kM]? rows$"
)


@pytest.mark.timeout(120)
def test_seeded_days_are_attached_counted_and_named_by_their_ids() -> None:
    # Given a migrated database of this test's own
    db = Database(f"eventbus_bench_history_seed_{os.getpid()}")
    db.create()
    try:
        # When 3,000 events are seeded over 3 past days, two days at a time
        seeded = seed(db, 3_000, 3, jobs=2)

        # Then every row is in the history, in 3 attached day partitions
        with psycopg.connect(db.dsn) as conn:

            def one(sql: str) -> Any:
                row = conn.execute(sql).fetchone()
                assert row is not None
                return row[0]

            assert seeded["days"] == 3 and seeded["rows"] == 3_000
            assert one("SELECT count(*) FROM system_events") == 3_000
            assert (
                one(
                    "SELECT count(DISTINCT tableoid) FROM system_events"
                    " WHERE created_at < now() - interval '1 day'"
                )
                == 3
            )
            # and each id is a UUIDv7 of its created_at's millisecond
            assert (
                one(
                    "SELECT count(*) FROM system_events WHERE eventbus_id_time(id)"
                    " IS DISTINCT FROM date_trunc('milliseconds', created_at)"
                )
                == 0
            )
            # and the kept counts hold every row, key by key
            assert (
                one(
                    "SELECT count(*) FROM (SELECT tenant_id, event_type, source_module,"
                    " target_module, entity_type, status, count(*) AS n FROM system_events"
                    " GROUP BY 1, 2, 3, 4, 5, 6) e FULL JOIN event_counts c USING (tenant_id,"
                    " event_type, source_module, target_module, entity_type, status)"
                    " WHERE e.n IS DISTINCT FROM c.n"
                )
                == 0
            )
            # and a few percent failed, the rest processed
            assert 0 < one("SELECT count(*) FROM system_events WHERE status = 'failed'") < 300
    finally:
        db.drop()


def test_the_last_line_has_the_issue_s_shape() -> None:
    phase = {"batched_rate": 5000.0, "single_rate": 1000.0, "list_p99_ms": 12.34}
    results = {
        "empty": {**phase, "get_p99_ms": 1.0},
        "history": {**phase, "batched_rate": 4900.0, "get_p99_ms": 2.0},
        "seed": {"rows": 20_000_000},
    }
    line = headline(results)
    assert line == (
        "history: batched 0.98 x, single 1.00 x, list p99 12.3 ms, get p99 2.0 ms at 20M rows"
    )
    assert LAST_LINE.match(line)
    assert [human_rows(n) for n in (200_000, 1_500_000, 950)] == ["200k", "1.5M", "950"]
