"""The list's statements use our indexes on a table of realistic size, not a Seq Scan.

The statements are the repository's own (``list_statement``, ``count_statement``), compiled for
PostgreSQL, so a change to the query or to the indexes shows up here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, Select, text
from sqlalchemy.dialects import postgresql

from bus.events.schemas import ListQuery
from bus.storage.db import make_engine
from bus.storage.event_queries import count_statement, list_statement

ROWS = 40_000
TENANTS = 17
BIG_TENANT = uuid.UUID(int=0)  # tenant number 0 of the generated ones

# Moduli are prime to each other, so every combination of values occurs.
LOAD = f"""
INSERT INTO system_events (
    id, tenant_id, event_type, source_module, target_module, entity_type, entity_id,
    event_data, status, retry_count, created_at, processed_at, error_message
)
SELECT
    gen_random_uuid(),
    ('00000000-0000-0000-0000-' || lpad(to_hex(g % {TENANTS}), 12, '0'))::uuid,
    'type_' || (g % 11),
    'source_' || (g % 5),
    'module_' || (g % 7),
    'entity_' || (g % 13),
    'entity-' || g,
    jsonb_build_object('n', g, 'note', repeat('x', 200)),
    (ARRAY['pending', 'processed', 'failed'])[g % 3 + 1],
    0,
    now() - g * interval '1 second',
    NULL,
    NULL
FROM generate_series(1, {ROWS}) AS g
"""  # noqa: S608 (module constants only)


@pytest.fixture(scope="module")
def loaded(database_url: str) -> Iterator[Engine]:
    """The table with ROWS events over TENANTS tenants, vacuumed and analyzed, once for the
    module (its tests only read); emptied again at the end."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE system_events"))
        conn.execute(text(LOAD))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE system_events"))
        conn.execute(text("VACUUM ANALYZE event_queue"))
    yield engine
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE system_events"))
    engine.dispose()


# A partition's index is named by PostgreSQL (system_events_p20261203_tenant_id_…_idx): the
# plan is read with the name of the history's index it belongs to.
PARENT_INDEX = """
SELECT c.relname, p.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
WHERE c.relkind = 'i'
"""


PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'system_events'::regclass
"""


def plan_of(engine: Engine, stmt: Select[Any]) -> dict[str, Any]:
    sql = stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        plan: dict[str, Any] = conn.execute(text(f"EXPLAIN (FORMAT JSON) {sql}")).scalar_one()[0]
        parents = dict(conn.execute(text(PARENT_INDEX)).all())
        empty = {
            name
            for (name,) in conn.execute(text(PARTITIONS))
            if not conn.execute(text(f"SELECT EXISTS (SELECT FROM {name})")).scalar_one()  # noqa: S608
        }
    for node in nodes(plan["Plan"]):
        if "Index Name" in node:
            node["Index Name"] = parents.get(node["Index Name"], node["Index Name"])
        # A day with no event yet is read whole for free (and the planner knows it is empty)
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in empty:
            node["Node Type"] = "Seq Scan of an empty partition"
    return plan["Plan"]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def assert_uses_our_index(plan: dict[str, Any], expected: str | None = None) -> None:
    used = {n["Index Name"] for n in nodes(plan) if "Index Name" in n}
    seq_scans = [n for n in nodes(plan) if n["Node Type"] == "Seq Scan"]
    shape = [(n["Node Type"], n.get("Index Name")) for n in nodes(plan)]
    assert not seq_scans, f"Seq Scan: {shape}"
    assert any(name.startswith(("ix_events_", "ix_event_queue_")) for name in used), (
        f"no ix_events_* or ix_event_queue_* index: {shape}"
    )
    if expected:
        assert expected in used, f"{expected} not in {used}"


CASES = {
    "tenant only": (BIG_TENANT, {}, "ix_events_tenant_created"),
    # Unfinished statuses: the keys from the in-flight set, the rows from the history.
    "tenant + status": (BIG_TENANT, {"status": "failed"}, "ix_event_queue_tenant_status_created"),
    "tenant + target + status": (
        BIG_TENANT,
        {"target_module": "module_3", "status": "pending"},
        "ix_event_queue_tenant_target_status_created",
    ),
    "tenant + retry to come": (
        BIG_TENANT,
        {"retry_scheduled": "true"},
        "ix_event_queue_tenant_status_created",
    ),
    # Processed: no index of the history holds status (a completion would rewrite it): the
    # tenant's events by an index of the tenant, the status read on each (most events are
    # processed; a third here, so the planner may choose another of the tenant's indexes).
    "tenant + processed": (BIG_TENANT, {"status": "processed"}, None),
    "tenant + target_module": (
        BIG_TENANT,
        {"target_module": "module_3"},
        "ix_events_tenant_target_created",
    ),
    "tenant + event_type": (
        BIG_TENANT,
        {"event_type": "type_4"},
        "ix_events_tenant_type_created",
    ),
    "tenant + source_module": (BIG_TENANT, {"source_module": "source_2"}, None),
    "tenant + entity_type": (BIG_TENANT, {"entity_type": "entity_9"}, None),
    "admin, all tenants": (None, {}, "ix_events_created"),
}


def test_the_load_is_what_the_plans_assume(loaded: Engine) -> None:
    with loaded.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM system_events")).scalar_one()
        tenants = conn.execute(
            text("SELECT count(DISTINCT tenant_id) FROM system_events")
        ).scalar_one()
    assert (count, tenants) == (ROWS, TENANTS)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("page", [1, 5])
def test_a_page_reads_an_index_in_order(loaded: Engine, case: str, page: int) -> None:
    tenant, filters, index = CASES[case]

    plan = plan_of(loaded, list_statement(tenant, ListQuery(filters, page=page, limit=100)))

    # (With a hundred-odd matches the planner may well sort them after a bitmap scan: fine.)
    assert_uses_our_index(plan, index)


@pytest.mark.parametrize("case", [c for c, (tenant, _, _) in CASES.items() if tenant is not None])
def test_a_tenants_count_reads_an_index(loaded: Engine, case: str) -> None:
    # The admin's count of every event is a full count: a scan of the table is right there.
    tenant, filters, _ = CASES[case]

    plan = plan_of(loaded, count_statement(tenant, ListQuery(filters)))

    assert_uses_our_index(plan)


@pytest.mark.parametrize("case", CASES)
def test_a_page_by_cursor_reads_an_index_in_order(loaded: Engine, case: str) -> None:
    # Given a cursor deep in the table (about 30,000 events newer than it)
    tenant, filters, index = CASES[case]
    with loaded.connect() as conn:
        position = conn.execute(
            text("SELECT created_at, id FROM system_events ORDER BY created_at DESC OFFSET 30000")
        ).first()
    assert position is not None
    after = (position.created_at, position.id)
    # When the page after it is planned (with the row that tells whether another follows)
    query = ListQuery(filters, limit=100)
    plan = plan_of(loaded, list_statement(tenant, query, after=after, peek=1))
    # Then it is a range of our index; where hundreds match or more, read in the list's order
    # with no sort of the matches (fewer may well be sorted after a bitmap scan: fine)
    assert_uses_our_index(plan, index)
    if case in ("tenant only", "tenant + status", "admin, all tenants"):
        assert not [n for n in nodes(plan) if "Sort" in n["Node Type"]], plan
