"""The scheduler (issue 20): workers claim from the in-flight set; per-entity order where a
handler asks, held keys an operator releases, paused modules, fair shares across tenants."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from bus.delivery import claims, fairness
from bus.events.rules import utcnow
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import claim_store
from bus.storage.db import transaction
from tests.support.factories import SEED_PUBLISH_BODY, event_values, insert_events, make_events
from tests.support.processes import wait_for
from tests.support.tokens import TokenFactory, auth
from tests.support.workers import WORKER_SETTINGS, WorkerFactory, load, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("effects")]

TENANT_B = uuid.UUID("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {**WORKER_SETTINGS, "retry_max_attempts": 2, "worker_poll_seconds": 0.2}


def publish_batch(client: TestClient, tok: str, bodies: list[dict[str, Any]]) -> list[str]:
    response = client.post("/system/events/batch", headers=auth(tok), json={"events": bodies})
    assert response.status_code == 201, response.text
    return [e["id"] for e in response.json()["events"]]


def body(module: str, entity: str, **data: Any) -> dict[str, Any]:
    return {**SEED_PUBLISH_BODY, "target_module": module, "entity_id": entity, "event_data": data}


def effects_in_commit_order(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT event_id FROM handler_effects ORDER BY id"))
            return [str(r[0]) for r in rows]
    finally:
        engine.dispose()


def claim_in(
    session: Any,
    worker: str = "w",
    *,
    pid: int = 1,
    limit: int = 500,
    module: str = "warehouse",
    order: claim_store.Order = claim_store.Order(),  # noqa: B008 - frozen, never changed
    weights: dict[uuid.UUID, float] | None = None,
    now: Any = None,
) -> list[claim_store.Claim]:
    """A claim as a worker makes it (fairness's decay and default cost, a minute's lease)."""
    now = now or utcnow()
    return claim_store.claim(
        session,
        module,
        order,
        weights=weights or {},
        decay=fairness.DECAY,
        cost=fairness.DEFAULT_COST,
        now=now,
        until=now + timedelta(seconds=60),
        worker=worker,
        pid=pid,
        limit=limit,
    )


def test_ordered_events_of_one_entity_run_one_at_a_time_in_commit_order(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
) -> None:
    # Given two workers of four processes each on an ordered handler
    start_worker("ordered", concurrency=4)
    start_worker("ordered", concurrency=4)
    tok = token()
    # When 400 events about 8 entities are published in batches, some failing once
    entities = [f"item-{n}" for n in range(8)]
    published: dict[str, list[str]] = {e: [] for e in entities}
    for batch in range(4):
        bodies = [
            body("ordered", entities[i % 8], write=True, fail_until=int(i % 13 == 0))
            for i in range(100)
        ]
        for i, event_id in enumerate(publish_batch(client, tok, bodies)):
            published[entities[i % 8]].append(event_id)
        del batch
    # Then every event is processed, and per entity the effects committed in publish order
    for ids in published.values():
        wait_for_status(runtime, ids[-1], "processed", 60)
    for ids in published.values():
        for event_id in ids:
            wait_for_status(runtime, event_id, "processed", 10)
    committed = effects_in_commit_order(settings.database_url)
    assert len(committed) == 400
    for entity, ids in published.items():
        assert [e for e in committed if e in set(ids)] == ids, entity


def test_a_failed_ordered_event_holds_its_key_until_released(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    start_worker: WorkerFactory,
) -> None:
    start_worker("ordered,ordered_skip")
    tok = token()
    # Given an ordered event that fails every attempt, and one after it about the same entity
    blocked, behind, other = publish_batch(
        client,
        tok,
        [
            body("ordered", "item-1", fail_until=99),
            body("ordered", "item-1"),
            body("ordered", "item-2"),
        ],
    )
    # Then the first fails for good, the other entity goes on, and the one behind it waits
    wait_for_status(runtime, blocked, "failed", 20)
    wait_for(lambda: load(runtime, blocked).next_attempt_at is None, 10, "retries not spent")
    wait_for_status(runtime, other, "processed", 10)
    time.sleep(1.0)
    assert load(runtime, behind).status == "pending"
    # And the key is listed, with its failed event and what waits behind it
    response = client.get("/system/held-keys", headers=auth(tok))
    assert response.status_code == 200, response.text
    (key,) = response.json()["held_keys"]
    assert key["event_id"] == blocked and key["entity_id"] == "item-1"
    assert key["waiting"] == 1 and key["target_module"] == "ordered"
    assert key["age_seconds"] >= 0
    # And another tenant neither sees nor releases it
    other_tok = token(TENANT_B)
    assert client.get("/system/held-keys", headers=auth(other_tok)).json()["held_keys"] == []
    refused = client.post(f"/system/held-keys/{blocked}/release", headers=auth(other_tok))
    assert refused.status_code == 404
    # When an operator releases it, the event behind runs; the failed one stays failed
    released = client.post(f"/system/held-keys/{blocked}/release", headers=auth(tok))
    assert released.status_code == 200, released.text
    assert released.json()["message"] == "Key released successfully"
    wait_for_status(runtime, behind, "processed", 10)
    assert load(runtime, blocked).status == "failed"
    assert client.get("/system/held-keys", headers=auth(tok)).json()["held_keys"] == []
    again = client.post(f"/system/held-keys/{blocked}/release", headers=auth(tok))
    assert again.status_code == 409 and again.json()["message"] == "Event holds no key"
    # And with on_failure="skip" a key moves on by itself after the last attempt
    failing, after = publish_batch(
        client, tok, [body("ordered_skip", "item-1", fail_until=99), body("ordered_skip", "item-1")]
    )
    wait_for_status(runtime, after, "processed", 20)
    assert load(runtime, failing).status == "failed"


def test_a_paused_module_holds_its_events_until_resumed(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    start_worker: WorkerFactory,
) -> None:
    start_worker("warehouse")
    tok = token()
    admin = auth(token(None, [], admin=True))
    # A tenant's user may not pause a module: it stops every tenant's events
    assert client.post("/system/modules/warehouse/pause", headers=auth(tok)).status_code == 403
    # When a system admin pauses the module and an event is published
    paused = client.post(
        "/system/modules/warehouse/pause", headers=admin, json={"reason": "downstream upgrade"}
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["module"]["paused"] is True
    event_id = publish_batch(client, tok, [body("warehouse", "item-1")])[0]
    # Then it waits, and the module is listed as paused
    time.sleep(1.5)
    assert load(runtime, event_id).status == "pending"
    modules = client.get("/system/modules", headers=auth(tok)).json()["modules"]
    assert {"target_module": "warehouse", "paused": True}.items() <= modules[0].items()
    assert modules[0]["reason"] == "downstream upgrade"
    # When it is resumed, the event runs without being sent again
    resumed = client.post("/system/modules/warehouse/resume", headers=admin)
    assert resumed.status_code == 200 and resumed.json()["module"]["paused"] is False
    wait_for_status(runtime, event_id, "processed", 5)


def test_a_claim_serves_a_tenant_that_used_little_before_one_with_a_backlog(
    runtime: Runtime,
) -> None:
    # Given tenant A with 2,000 events waiting and a heavy recent usage, and B with 5
    a = insert_events(runtime, 2000)
    b = insert_events(runtime, 5, tenant_id=TENANT_B)
    now = utcnow()
    tenant_a = load(runtime, a[0]).tenant_id
    with transaction(runtime.sessions) as session:
        claim_store.add_usage(session, "warehouse", [(tenant_a, 30.0, 10_000)], now, 1.0)
        # When a worker claims 50
        claimed = claim_in(session, "test", limit=50, now=now)
    ids = [c.id for c in claimed]
    # Then B's five are among them: B comes first
    assert len(ids) == 50 and set(b) <= set(ids)
    # And a weight shifts the shares: B weighing a ten-thousandth comes after A's 45 (A's
    # stored usage, 30 s, is far below B's 5 events at a ten-thousandth of a share)
    weights = fairness.parse_weights(f"{TENANT_B}=0.00001")
    with transaction(runtime.sessions) as session:
        claim_store.release(session, ids, "test")
        again = claim_in(session, "test", limit=50, weights=weights, now=now)
    assert not set(b) & {c.id for c in again}


def claim_as(
    runtime: Runtime, worker: str, pid: int, limit: int = 500, module: str = "warehouse"
) -> list[claim_store.Claim]:
    with transaction(runtime.sessions) as session:
        return claim_in(session, worker, pid=pid, limit=limit, module=module)


def holders(runtime: Runtime) -> set[tuple[str, int, str]]:
    with runtime.engine.connect() as conn:
        rows = conn.execute(text("SELECT worker, pid, target_module FROM claim_holders"))
        return {(r[0], r[1], r[2]) for r in rows}


def a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_claim_stamps_its_rows_with_no_index_entry(runtime: Runtime) -> None:
    # Given 500 events published in one batch (pages of the set filled to half)
    insert_events(runtime, 500)
    counted = text(
        "SELECT pg_stat_get_xact_tuples_updated('event_queue'::regclass), "
        "pg_stat_get_xact_tuples_hot_updated('event_queue'::regclass)"
    )
    # When one claim takes them all
    with transaction(runtime.sessions) as session:
        before = session.execute(counted).one()
        claimed = claim_in(session)
        after = session.execute(counted).one()
    # Then nearly every stamp found room on its own page: no index entry written (no index
    # names a claim's columns; 0 of 500 were HOT when one did)
    assert len(claimed) == 500
    assert after[0] - before[0] == 500
    assert after[1] - before[1] >= 400, f"{after[1] - before[1]} of 500 HOT"
    # And the process is noted as a holder of the module's claims
    assert holders(runtime) == {("w", 1, "warehouse")}


def test_the_claims_of_a_dead_process_end_and_run_again_as_lost(runtime: Runtime) -> None:
    # Given a worker process that claimed 3 events and died, and one of another module
    # claimed by a live process of the same worker
    ids = insert_events(runtime, 3)
    insert_events(runtime, 1, target_module="logistics")
    dead = a_dead_pid()
    assert len(claim_as(runtime, "w1", dead)) == 3
    assert len(claim_as(runtime, "w1", os.getpid(), module="logistics")) == 1
    assert claims.dead_processes(runtime, "w1") == [dead]
    # When the worker's poll rescues them
    rescued = claims.rescue(runtime, "w1", ["warehouse", "logistics"])
    # Then the module's events are claimable again, and their next claim says the run was lost
    assert rescued == ["warehouse"]
    again = claim_as(runtime, "w2", os.getpid())
    assert {c.id for c in again} == set(ids)
    assert {c.lost for c in again} == {claims.CHILD_DIED}
    # And the dead process is no longer a holder; the live one's claim is untouched
    assert ("w1", dead, "warehouse") not in holders(runtime)
    assert claim_as(runtime, "w3", os.getpid(), module="logistics") == []


def test_the_claims_of_a_worker_without_a_heartbeat_end(runtime: Runtime) -> None:
    # Given a worker (no heartbeat: it is gone) holding claims in two modules
    insert_events(runtime, 2)
    insert_events(runtime, 2, target_module="logistics")
    assert len(claim_as(runtime, "gone", 4242)) == 2
    assert len(claim_as(runtime, "gone", 4242, module="logistics")) == 2
    # When a live worker of one module polls
    rescued = claims.rescue(runtime, "live", ["warehouse"], dead=[])
    # Then that module's claims end, said lost by a worker gone; the other module's stay
    assert rescued == ["warehouse"]
    assert {c.lost for c in claim_as(runtime, "live", os.getpid())} == {claims.WORKER_GONE}
    assert claim_as(runtime, "live", os.getpid(), module="logistics") == []
    assert ("gone", 4242, "logistics") in holders(runtime)
    assert ("gone", 4242, "warehouse") not in holders(runtime)


ORDERED = claim_store.Order(rest=True)


def interleaved(runtime: Runtime, keys: int, per_key: int) -> dict[str, list[uuid.UUID]]:
    """``keys * per_key`` events committed round robin over the keys, a microsecond apart."""
    base = utcnow()
    rows = [
        event_values(
            entity_id=f"k{i % keys}",
            created_at=base + timedelta(microseconds=i),
            event_data={},
        )
        for i in range(keys * per_key)
    ]
    make_events(runtime, rows)
    by_key: dict[str, list[uuid.UUID]] = {}
    for row in rows:
        by_key.setdefault(row["entity_id"], []).append(row["id"])
    return by_key


def claimed_order(
    runtime: Runtime, worker: str, limit: int = 500, order: claim_store.Order = ORDERED
) -> list[uuid.UUID]:
    with transaction(runtime.sessions) as session:
        return [c.id for c in claim_in(session, worker, limit=limit, order=order)]


def test_an_ordered_claim_takes_whole_runs_of_a_share_of_the_keys(runtime: Runtime) -> None:
    # Given 8 entities with 5 events each, committed round robin
    by_key = interleaved(runtime, 8, 5)
    # When a worker claims: the runs of a quarter of the keys, the oldest, in commit order
    first = claimed_order(runtime, "w1")
    assert first == sorted(by_key["k0"] + by_key["k1"], key=first.index)
    assert [e for e in first if e in by_key["k0"]] == by_key["k0"]
    # And a second claimer takes other keys' runs, never a later event of a claimed key
    second = claimed_order(runtime, "w2")
    assert set(second) == set(by_key["k2"] + by_key["k3"])
    # And the unordered claim of the same backlog takes every event, in commit order
    with transaction(runtime.sessions) as session:
        claim_store.release(session, first, "w1")
        claim_store.release(session, second, "w2")
    everything = claimed_order(runtime, "w3", order=claim_store.Order())
    assert len(everything) == 40


def test_an_ordered_claim_stops_an_entitys_run_before_a_row_it_cannot_take(
    runtime: Runtime,
) -> None:
    # Given one entity's 5 events, the third locked by another transaction (a claimer
    # taking it at this moment)
    by_key = interleaved(runtime, 1, 5)
    ids = by_key["k0"]
    with runtime.engine.connect() as other:
        other.execute(text("SELECT 1 FROM event_queue WHERE id = :id FOR UPDATE"), {"id": ids[2]})
        # When a worker claims: only the run before the locked row
        assert claimed_order(runtime, "w1") == ids[:2]
        other.rollback()
    # And while those two are claimed, nothing of the entity can be claimed by another
    assert claimed_order(runtime, "w2") == []
    # And once they are given back, the whole run is claimed
    with transaction(runtime.sessions) as session:
        claim_store.release(session, ids[:2], "w1")
    assert claimed_order(runtime, "w3") == ids


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
def test_a_claim_reads_a_big_backlog_by_index_only(runtime: Runtime, ordered: bool) -> None:
    # Given 20,000 events waiting in one module (statistics up to date)
    with runtime.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO system_events (id, tenant_id, event_type, source_module, "
                "target_module, entity_type, entity_id, event_data, status, retry_count, "
                "created_at) SELECT gen_random_uuid(), :tenant, 't', 's', 'warehouse', 'e', "
                "'k-' || (g % 100), '{}', 'pending', 0, now() + g * interval '1 microsecond' "
                "FROM generate_series(1, 20000) g"
            ),
            {"tenant": uuid.uuid4()},
        )
        conn.execute(text("ANALYZE event_queue"))
    # When a claim of 500 is planned
    statement = claim_store._PG_CLAIM_ORDERED if ordered else claim_store._PG_CLAIM
    now = utcnow()
    params = {
        "module": "warehouse", "now": now, "until": now + timedelta(seconds=60), "worker": "w",
        "pid": 1, "limit": 500, "scan": 500 * claim_store.ORDER_WINDOW, "ordered": ordered,
        "rest": ordered, "weighted": [], "weights": [], "decay": fairness.DECAY,
        "cost": fairness.DEFAULT_COST, "types": [], "except_types": [], "skip": [],
        "share": claim_store.ORDER_SHARE,
    }  # fmt: skip
    explain = text("EXPLAIN " + statement.element.text).bindparams(*claim_store._TIMES)
    with runtime.engine.begin() as conn:
        conn.execute(claim_store.BY_INDEX)  # as a claim does, in its transaction
        plan = "\n".join(row[0] for row in conn.execute(explain, params))
    # Then the set is read through its indexes, never scanned whole (a hash join over the whole
    # set made a claim of 500 on a 100k backlog take 77 ms instead of 7)
    assert "Seq Scan on event_queue" not in plan, plan
