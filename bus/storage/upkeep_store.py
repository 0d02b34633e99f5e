"""VACUUM of the in-flight set's tables when their dead rows pile up (PostgreSQL only).

Every event passes through ``event_queue`` (inserted, claimed, deleted): a queue table turns
its rows over every few seconds, and each claim walks its index from the oldest end, over the
entries of rows already gone until a VACUUM removes them. Autovacuum does this where it runs
and keeps up; where it is off or behind, the claims slow down with the dead rows."""

from __future__ import annotations

from sqlalchemy import Connection, text

SET_TABLES = ("event_queue", "claim_holders", "tenant_usage")
"""The scheduler's tables that churn (names from the models; constants, never input)."""

_DEAD = text(
    "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables "
    "WHERE schemaname = current_schema() AND relname = ANY(:tables)"
)


def dead_rows(conn: Connection) -> dict[str, tuple[int, int]]:
    """(live, dead) rows of each of :data:`SET_TABLES` as the statistics last counted them."""
    rows = conn.execute(_DEAD, {"tables": list(SET_TABLES)})
    return {name: (int(live), int(dead)) for name, live, dead in rows}


def vacuum(conn: Connection, table: str) -> None:
    """``VACUUM`` one of :data:`SET_TABLES`; ``conn`` must be in autocommit."""
    if table not in SET_TABLES:
        raise ValueError(f"not a table of the in-flight set: {table}")
    conn.execute(text(f'VACUUM "{table}"'))
