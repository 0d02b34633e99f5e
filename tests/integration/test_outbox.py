"""The transactional outbox in a caller's own PostgreSQL database, drained by real
`eventbus forward` processes into the bus (its database and Redis), and a real worker.

Exactly once is counted two ways: the bus's rows (the outbox ids are the event ids) and the
messages on the module's Redis queue (each id sent at most once, however often a forwarder
died).
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.orm import Session

from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage.models import SystemEvent
from eventbus import outbox
from eventbus.errors import InvalidRequest
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import BIN, Proc, settings_env, wait_for
from tests.support.queues import queued_ids
from tests.support.services import create_database, drop_database
from tests.support.tokens import TENANT_A, TokenFactory
from tests.support.workers import WorkerFactory, wait_for_status

pytestmark = pytest.mark.integration

ORDERS = "CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, item text NOT NULL)"


@pytest.fixture(scope="module")
def caller_url() -> Iterator[str]:
    """A database of the caller's own (not the bus's), with the outbox made by the CLI."""
    name = f"eventbus_caller_{os.getpid()}"
    url = create_database(name)
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)  # as a user would type it
    proc = Proc(
        [str(BIN / "eventbus"), "outbox", "init", "--database-url", plain], dict(os.environ)
    )
    assert proc.popen.wait(60) == 0, proc.output
    yield url
    drop_database(name)


@pytest.fixture
def caller(caller_url: str) -> Iterator[Engine]:
    engine = create_engine(caller_url)
    with engine.begin() as conn:
        conn.execute(text(ORDERS))
        conn.execute(text("TRUNCATE orders, eventbus_outbox"))
    yield engine
    engine.dispose()


def place_order(engine: Engine, *, commit: bool, **data: Any) -> uuid.UUID:
    """The caller's own write and its event, in one transaction committed or rolled back."""
    with Session(engine) as session:
        order = uuid.uuid4()
        session.execute(text("INSERT INTO orders (id, item) VALUES (:id, 'book')"), {"id": order})
        event_id = outbox.publish(
            session,
            tenant_id=TENANT_A,
            event_type="order_placed",
            source_module="shop",
            target_module="warehouse",
            entity_type="order",
            entity_id=str(order),
            event_data=data,
        )
        if commit:
            session.commit()
        else:
            session.rollback()
    return event_id


def place_orders(engine: Engine, count: int, chunk: int = 200) -> list[uuid.UUID]:
    """``count`` committed outbox rows (a few transactions), and one rolled back per chunk."""
    ids: list[uuid.UUID] = []
    for start in range(0, count, chunk):
        with Session(engine) as session:
            for i in range(start, min(start + chunk, count)):
                ids.append(
                    outbox.publish(
                        session,
                        tenant_id=TENANT_A,
                        **{**SEED_PUBLISH_BODY, "entity_id": f"item-{i}", "event_data": {}},
                    )
                )
            session.commit()
        place_order(engine, commit=False)
    return ids


def forwarder(settings: Settings, caller_url: str, *args: str) -> Proc:
    return Proc(
        [str(BIN / "eventbus"), "forward", "--database-url", caller_url, *args],
        settings_env(settings),
    )


def printed_count(proc: Proc) -> int:
    """What ``eventbus forward --once`` printed: the rows it took."""
    counts = [line.split()[1] for line in proc.lines if re.fullmatch(r"forwarded \d+ rows", line)]
    return int(counts[-1])


def bus_ids(runtime: Runtime) -> list[uuid.UUID]:
    with runtime.sessions() as session:
        return list(session.execute(select(SystemEvent.id)).scalars())


def unforwarded(engine: Engine) -> int:
    t = outbox.outbox_table
    with engine.connect() as conn:
        stmt = select(func.count()).select_from(t).where(t.c.forwarded_at.is_(None))
        return int(conn.execute(stmt).scalar_one())


def test_the_migration_text_makes_the_table_the_metadata_describes(caller_url: str) -> None:
    # Given the documented Alembic revision run on an empty schema of the caller's database
    engine = create_engine(caller_url)
    namespace: dict[str, Any] = {}
    exec(outbox.MIGRATION, namespace)  # noqa: S102 - our own constant, run as a user would
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE eventbus_outbox"))
            with Operations.context(MigrationContext.configure(conn)):
                namespace["upgrade"]()
            # Then autogenerate sees nothing to change against outbox.metadata
            context = MigrationContext.configure(conn)
            assert compare_metadata(context, outbox.metadata) == []
    finally:
        engine.dispose()


def test_publish_validates_like_the_api(caller: Engine) -> None:
    with Session(caller) as session:
        with pytest.raises(InvalidRequest) as missing:
            outbox.publish(session, tenant_id=TENANT_A, **{**SEED_PUBLISH_BODY, "entity_id": " "})
        assert (missing.value.status, missing.value.message) == (400, "Field required entity_id")
        with pytest.raises(InvalidRequest) as module:
            outbox.publish(
                session, tenant_id=TENANT_A, **{**SEED_PUBLISH_BODY, "target_module": "Ware House"}
            )
        assert module.value.message == "Invalid target_module"
        with pytest.raises(InvalidRequest) as tenant:
            outbox.publish(session, tenant_id="acme", **SEED_PUBLISH_BODY)
        assert tenant.value.message == "Invalid tenant_id"
        session.commit()
    assert unforwarded(caller) == 0


def test_rolled_back_publishes_nothing_committed_is_processed(
    caller: Engine,
    caller_url: str,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
) -> None:
    start_worker("warehouse")
    # Given one order rolled back and one committed, each with its outbox event
    lost = place_order(caller, commit=False)
    kept = place_order(caller, commit=True, write=True)

    # When a forwarder runs one batch
    proc = forwarder(settings, caller_url, "--once")
    assert proc.popen.wait(60) == 0, proc.output
    assert printed_count(proc) == 1, proc.output

    # Then only the committed event is in the bus, and a worker processes it
    assert bus_ids(runtime) == [kept]
    assert lost != kept
    row = wait_for_status(runtime, str(kept), "processed", 30)
    assert (row.tenant_id, row.event_type, row.entity_type) == (TENANT_A, "order_placed", "order")
    assert unforwarded(caller) == 0

    # And forwarding again finds nothing
    again = forwarder(settings, caller_url, "--once")
    assert again.popen.wait(60) == 0, again.output
    assert printed_count(again) == 0, again.output


def test_a_forwarder_killed_mid_batch_and_restarted_forwards_each_row_once(
    caller: Engine, caller_url: str, runtime: Runtime, settings: Settings
) -> None:
    # Given 3,000 committed rows (and rolled-back ones among them)
    committed = place_orders(caller, 3000)

    # When a forwarder is SIGKILLed three times while it drains, then runs to the end
    for seen in (300, 1200, 2100):
        proc = forwarder(settings, caller_url, "--batch-size", "25", "--interval", "0.05")
        wait_for(lambda n=seen: len(bus_ids(runtime)) >= n, 60, f"fewer than {seen} forwarded")
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(10)
    last = forwarder(settings, caller_url, "--batch-size", "25", "--interval", "0.05")
    try:
        wait_for(lambda: unforwarded(caller) == 0, 120, "the outbox was never drained")
    finally:
        last.stop()

    # Then the bus holds exactly the committed rows, and no id was queued twice
    stored = bus_ids(runtime)
    assert len(stored) == len(committed)
    assert set(stored) == set(committed)
    sends = queued_ids(settings)
    assert max(sends.values()) == 1
    assert set(sends) <= {str(i) for i in committed}


def test_two_forwarders_share_the_outbox(
    caller: Engine, caller_url: str, runtime: Runtime, settings: Settings
) -> None:
    # Given two forwarders running
    procs = [
        forwarder(settings, caller_url, "--batch-size", "10", "--interval", "0.02")
        for _ in range(2)
    ]
    try:
        for proc in procs:
            proc.wait_for_output("forwarding eventbus_outbox", 30)
        # When 1,000 rows are committed while they poll
        committed = place_orders(caller, 1000, chunk=20)
        wait_for(lambda: unforwarded(caller) == 0, 120, "the outbox was never drained")
    finally:
        for proc in procs:
            proc.stop()

    # Then each row is in the bus once, and both forwarders took batches
    stored = bus_ids(runtime)
    assert sorted(stored) == sorted(committed)
    assert max(queued_ids(settings).values()) == 1
    for proc in procs:
        assert "forwarded" in proc.output.replace("forwarding eventbus_outbox", ""), proc.output


def test_forwarded_rows_are_purged_after_the_retention(
    caller: Engine, caller_url: str, runtime: Runtime, settings: Settings
) -> None:
    committed = place_orders(caller, 5)
    proc = forwarder(settings, caller_url, "--once")
    assert proc.popen.wait(60) == 0, proc.output
    t = outbox.outbox_table
    with caller.begin() as conn:
        conn.execute(text("UPDATE eventbus_outbox SET forwarded_at = now() - interval '2 hours'"))
    forwarder_ = outbox.Forwarder(caller, outbox.BusSink(runtime), retention=timedelta(hours=1))
    assert forwarder_.purge() == len(committed)
    with caller.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t)).scalar_one() == 0


def test_forward_over_http_keys_each_row(
    caller: Engine,
    caller_url: str,
    runtime: Runtime,
    settings: Settings,
    api: str,
    token: TokenFactory,
) -> None:
    # Given 5 rows forwarded over HTTP
    place_orders(caller, 5)
    args = ("--api", api, "--token", token(system=True), "--once")
    proc = forwarder(settings, caller_url, *args)
    assert proc.popen.wait(60) == 0, proc.output
    assert printed_count(proc) == 5, proc.output
    # When the forwarder "died" before marking them and forwards them again
    with caller.begin() as conn:
        conn.execute(text("UPDATE eventbus_outbox SET forwarded_at = NULL"))
    again = forwarder(settings, caller_url, *args)
    assert again.popen.wait(60) == 0, again.output
    assert printed_count(again) == 5, again.output
    # Then the API stored each once: the row id was each publish's Idempotency-Key
    entities = sorted(e.entity_id for e in _events(runtime))
    assert entities == [f"item-{i}" for i in range(5)]
    assert unforwarded(caller) == 0


def _events(runtime: Runtime) -> list[SystemEvent]:
    with runtime.sessions() as session:
        return list(session.execute(select(SystemEvent)).scalars())
