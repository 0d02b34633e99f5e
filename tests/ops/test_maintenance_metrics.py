"""A real `eventbus maintenance` whose database is unreachable: every chore fails on its own
schedule, each failure is logged and counted per chore on its /metrics, and the process goes
on (one chore's failure stops no other)."""

from __future__ import annotations

import httpx

from bus.settings import Settings
from tests.support.processes import Proc, eventbus, eventbus_env, free_port, wait_for
from tests.support.prometheus import has, parse, value

CHORES = (
    "resend",
    "fold_counts",
    "fold_outcome_minutes",
    "purge_attempts",
    "purge_idempotency_keys",
)
NOWHERE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def test_each_failing_chore_is_logged_and_counted_on_its_own(settings: Settings) -> None:
    # Given the maintenance process on a database nothing listens for
    port = free_port()
    broken = settings.model_copy(update={"database_url": NOWHERE, "relay_interval_seconds": 0.1})
    proc = Proc([*eventbus("maintenance", "--metrics-port", str(port))], eventbus_env(broken))
    try:
        # When its chores run: each fails, and says so in its own line
        for chore in CHORES:
            proc.wait_for_output(f"maintenance: {chore} failed", 30)

        # Then /metrics counts the failures per chore, and the process is still running
        def counted() -> bool:
            samples = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            name = "eventbus_maintenance_failures_total"
            return all(
                has(samples, name, chore=c) and value(samples, name, chore=c) >= 1 for c in CHORES
            )

        wait_for(counted, 15, "the failures are not counted per chore")
        assert proc.popen.poll() is None, proc.output[-3000:]
    finally:
        proc.stop()
