"""Vacuum the in-flight set when autovacuum does not (``bus.storage.upkeep_store``): a table
whose dead rows pass :data:`MIN_DEAD` and a tenth of its live rows is vacuumed. Where
autovacuum keeps up (the reloptions of migration 0010 ask it to), this finds nothing to do."""

from __future__ import annotations

import logging

from bus.maintenance.chore import Chore
from bus.runtime import Runtime
from bus.storage import upkeep_store

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0
MIN_DEAD = 10_000
"""Dead rows below this cost a claim little: left to autovacuum."""


def vacuum_in_flight(runtime: Runtime) -> int:
    """VACUUM the set's tables that need it; the dead rows they held."""
    engine = runtime.engine
    if engine.dialect.name != "postgresql":
        return 0
    with engine.connect() as conn:
        counts = upkeep_store.dead_rows(conn)
    due = [t for t, (live, dead) in counts.items() if dead >= max(MIN_DEAD, live // 10)]
    if not due:
        return 0
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in due:
            upkeep_store.vacuum(conn, table)
            log.info("vacuumed %s: %d dead rows", table, counts[table][1])
    return sum(counts[t][1] for t in due)


def chore(runtime: Runtime) -> Chore:
    return Chore("vacuum_in_flight", INTERVAL_SECONDS, lambda: vacuum_in_flight(runtime))
