"""``GET /system/events/{id}``: one event and its attempt history, with the list's reader rules
and tenancy; the history as the workers (in process, through ``EventProcessor._run``) and a
``PUT`` record it."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event

from bus.broker.dispatch import Dispatch
from bus.delivery import attempts
from bus.delivery.attempts import Attempt
from bus.events.rules import save_changes
from bus.maintenance.purges import purge_attempts
from bus.runtime import Runtime
from bus.storage import attempt_store
from bus.storage.db import transaction
from bus.uow import UnitOfWork
from tests.support.factories import NO_SUCH_EVENT, RFC3339_UTC, SEED_PUBLISH_BODY, make_event
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth
from workers.event import Event
from workers.registry import Registry
from workers.tasks import EventProcessor

EVENTS = "/system/events"
ENTRY_KEYS = [
    "attempt",
    "started_at",
    "finished_at",
    "outcome",
    "error_message",
    "worker",
    "source",
]


class Recorder:
    """Stands in for the Dispatcher: records what a unit of work sends after its commit."""

    def __init__(self) -> None:
        self.sent: list[Dispatch] = []

    def send(self, dispatches: list[Dispatch]) -> list[uuid.UUID]:
        self.sent.extend(dispatches)
        return []


def unit(runtime: Runtime) -> UnitOfWork:
    return UnitOfWork(runtime.sessions(), Recorder())  # type: ignore[arg-type]


def get(client: TestClient, event_id: Any, tok: str, **params: str) -> Any:
    return client.get(f"{EVENTS}/{event_id}", headers=auth(tok), params=params)


def put(client: TestClient, event_id: Any, tok: str, **body: Any) -> None:
    response = client.put(f"{EVENTS}/{event_id}", headers=auth(tok), json=body)
    assert response.status_code == 200, response.text


# --- the route -------------------------------------------------------------------------------


def test_an_event_and_its_empty_history(client: TestClient, token: TokenFactory) -> None:
    # Given a published event no worker has run
    tok = token()
    published = client.post(EVENTS, headers=auth(tok), json=SEED_PUBLISH_BODY).json()["event"]
    # When it is read
    response = get(client, published["id"], tok)
    # Then the envelope carries the seed's event object, exactly, and no attempt yet
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "message": "Event retrieved successfully",
        "event": published,
        "attempts": [],
        "attempts_total": 0,
        "next_attempt_at": None,
        "deliveries": [],
    }
    assert list(response.json()) == [
        "success",
        "message",
        "event",
        "attempts",
        "attempts_total",
        "next_attempt_at",
        "deliveries",
    ]


def test_a_failed_event_says_when_its_retry_is_due(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    due = datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    retrying = make_event(runtime, status="failed", retry_count=1, next_attempt_at=due)["id"]
    gave_up = make_event(runtime, status="failed", retry_count=5)["id"]

    assert get(client, retrying, token()).json()["next_attempt_at"] == "2030-01-02T03:04:05.600000Z"
    assert get(client, gave_up, token()).json()["next_attempt_at"] is None


def test_a_put_that_changes_the_status_records_an_api_entry(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    tok = token()
    event_id = make_event(runtime)["id"]
    # When it is reported processed, then replayed (pending), failed, and failed again
    put(client, event_id, tok, status="processed")
    put(client, event_id, tok, status="pending")
    put(client, event_id, tok, status="failed", error_message="Timeout")
    put(client, event_id, tok, status="failed", error_message="Timeout again")
    # Then each change to processed or failed is one api entry, numbered from 1; pending and a
    # repeated status record none
    body = get(client, event_id, tok).json()
    entries = body["attempts"]
    assert [(e["attempt"], e["outcome"], e["source"]) for e in entries] == [
        (1, "processed", "api"),
        (2, "failed", "api"),
    ]
    assert [list(e) for e in entries] == [ENTRY_KEYS, ENTRY_KEYS]
    assert [e["error_message"] for e in entries] == [None, "Timeout"]
    assert all(e["started_at"] is None for e in entries)
    assert all(RFC3339_UTC.fullmatch(e["finished_at"]) for e in entries)
    assert all(e["worker"].startswith(f"{socket.gethostname()}/") for e in entries)
    assert body["event"]["status"] == "failed" and body["event"]["retry_count"] == 2


def test_a_long_history_shows_its_last_entries_each_error_cut(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    # Given an event with 150 entries of 10,000-character errors (3,600 PUTs made 21 MB before)
    event_id = make_event(runtime)["id"]
    now = datetime.now(UTC)
    total = attempt_store.SHOWN_ATTEMPTS + 50
    entries = [
        attempt_store.Entry(
            event_id,
            attempt_store.Outcome.FAILED,
            now,
            error_message=f"{n}:" + "e" * 9_990,
            source=attempt_store.Source.API,
        )
        for n in range(1, total + 1)
    ]
    with transaction(runtime.sessions) as session:
        attempt_store.record(session, entries)
    # When it is read
    response = get(client, event_id, token())
    # Then it shows the last SHOWN_ATTEMPTS, oldest first, says how many there are, and each
    # error is cut to SHOWN_ERROR characters ending in …
    body = response.json()
    shown = body["attempts"]
    assert [e["attempt"] for e in shown] == list(range(51, total + 1))
    assert body["attempts_total"] == total
    assert {len(e["error_message"]) for e in shown} == {attempt_store.SHOWN_ERROR}
    assert all(e["error_message"].endswith("e…") for e in shown)
    assert shown[0]["error_message"].startswith("51:")
    assert len(response.content) < 200_000  # 1.5 MB of errors before


def test_another_tenants_event_is_never_read(
    client: TestClient, token: TokenFactory, runtime: Runtime
) -> None:
    # Given tenant B's event, and every statement the detail runs recorded
    theirs = str(make_event(runtime, tenant_id=TENANT_B, event_data={"mark": "b-secret"})["id"])
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    sa_event.listen(runtime.engine, "before_cursor_execute", note)
    try:
        # When tenant A's manager asks for it
        response = get(client, theirs, token(TENANT_A))
    finally:
        sa_event.remove(runtime.engine, "before_cursor_execute", note)
    # Then it is not found, and the statement that looked for it named A's tenant in its
    # WHERE: B's row was never fetched (its 404 costs what an unknown id's does)
    assert response.json() == {"success": False, "message": "Event not found"}
    reads = [(sql, params) for sql, params in seen if "FROM system_events" in sql]
    assert reads, seen
    for sql, params in reads:
        assert "tenant_id =" in sql.split("WHERE", 1)[1], sql
        assert str(TENANT_A) in str(params) and theirs in str(params), params


@pytest.mark.parametrize(
    "spelling",
    [
        lambda u: f"urn:uuid:{u}",
        lambda u: f"{{{u}}}",
        lambda u: u.hex,
        lambda u: str(u).upper(),  # any case is canonical: found
    ],
    ids=["urn", "braces", "bare hex", "upper case"],
)
def test_only_the_canonical_spelling_of_an_id_names_it(
    client: TestClient, token: TokenFactory, runtime: Runtime, spelling: Any
) -> None:
    # Given an event, named in another spelling of its UUID
    event_id = make_event(runtime)["id"]
    path = spelling(uuid.UUID(str(event_id)))
    tok = token()
    # When it is read and updated by that spelling
    read = get(client, path, tok)
    updated = client.put(f"{EVENTS}/{path}", headers=auth(tok), json={"status": "processed"})
    # Then only the 8-4-4-4-12 form (any case) finds it; the others are any unknown id's 404
    if path == str(event_id).upper():
        assert (read.status_code, updated.status_code) == (200, 200)
        return
    for response in (read, updated):
        assert (response.status_code, response.json()) == (
            404,
            {"success": False, "message": "Event not found"},
        )
    assert get(client, event_id, tok).json()["event"]["status"] == "pending"


@pytest.mark.parametrize(
    "event_id",
    [
        "not-a-uuid",
        "123",
        NO_SUCH_EVENT,
        "00000000-0000-0000-0000-000000000000",
        "x" * 2000,
        "%00",
    ],
    ids=lambda v: repr(v[:20]),
)
def test_an_unknown_or_malformed_id_is_not_found(
    client: TestClient, token: TokenFactory, runtime: Runtime, event_id: str
) -> None:
    make_event(runtime)

    response = get(client, event_id, token())

    assert response.status_code == 404
    assert response.json() == {"success": False, "message": "Event not found"}


@pytest.fixture
def both(runtime: Runtime) -> Iterator[dict[str, str]]:
    """One event in tenant A, one in tenant B (marked, so a leak of it shows)."""
    made = {
        "A": str(make_event(runtime, tenant_id=TENANT_A)["id"]),
        "B": str(make_event(runtime, tenant_id=TENANT_B, event_data={"mark": "b-secret"})["id"]),
    }
    yield made


# (caller, tenant_id parameter, event) -> expected status; others answer as the list does
MATRIX = [
    ("manage:system", None, "A", 200),
    ("manage:system", None, "B", 404),
    ("system token", None, "A", "as the list"),  # a system token writes, it does not read
    ("system token with manage:system", None, "A", 200),
    ("system token with manage:system", None, "B", 404),
    ("admin of A", None, "A", 200),
    ("admin of A", None, "B", 200),  # a system admin naming no tenant reads any tenant's
    ("admin of A", "A", "B", 404),
    ("admin of A", "B", "B", 200),
    ("admin of A", "B", "A", 404),
    ("manage:system", "A", "A", 200),
    ("manage:system", "B", "B", "as the list"),
    ("system token", "B", "B", "as the list"),
    ("no permission", None, "A", "as the list"),
    ("no token", None, "A", "as the list"),
    ("manage:system", "not-a-uuid", "A", "as the list"),
]


def caller_token(kind: str, token: TokenFactory) -> str | None:
    return {
        "manage:system": token(TENANT_A),
        "system token": token(TENANT_A, [], system=True),
        "system token with manage:system": token(TENANT_A, system=True),
        "admin of A": token(TENANT_A, [], admin=True),
        "no permission": token(TENANT_A, []),
        "no token": None,
    }[kind]


@pytest.mark.parametrize(("caller", "tenant", "which", "expected"), MATRIX)
def test_the_tenancy_matrix(
    client: TestClient,
    token: TokenFactory,
    both: dict[str, str],
    caller: str,
    tenant: str | None,
    which: str,
    expected: int | str,
) -> None:
    tok = caller_token(caller, token)
    headers = auth(tok) if tok else {}
    tenants = {"A": str(TENANT_A), "B": str(TENANT_B)}
    params = {} if tenant is None else {"tenant_id": tenants.get(tenant, tenant)}

    response = client.get(f"{EVENTS}/{both[which]}", headers=headers, params=params)

    if expected == "as the list":
        listed = client.get(EVENTS, headers=headers, params=params)
        assert listed.status_code in (400, 401, 403), listed.text
        assert (response.status_code, response.json()) == (listed.status_code, listed.json())
        return
    assert response.status_code == expected, response.text
    if expected == 200:
        assert response.json()["event"]["id"] == both[which]
    else:
        assert response.json() == {"success": False, "message": "Event not found"}
        assert "b-secret" not in response.text


# --- recorded by the workers, in process -----------------------------------------------------


def test_a_batch_records_every_attempt_in_one_insert(runtime: Runtime) -> None:
    # Given 50 claimed events whose handler fails for every fifth one
    handlers = Registry()

    def handle(event: Event) -> None:
        if event.event_data["n"] % 5 == 0:
            raise LookupError(f"no item {event.event_data['n']}")

    handlers.add("warehouse", "*", handle)
    ids = [make_event(runtime, event_data={"n": n})["id"] for n in range(50)]
    statements: list[tuple[str, bool]] = []

    def count(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        statements.append((statement, many))

    sa_event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        with unit(runtime) as uow:
            runs, skips = attempts.begin_many(uow, ids)
            assert len(runs) == 50 and not skips
            statements.clear()
            # When the delivery runs them
            EventProcessor(runtime, handlers)._run(uow, runs)
    finally:
        sa_event.remove(runtime.engine, "before_cursor_execute", count)

    # Then their 50 entries were written by ONE statement (not an executemany: one round trip),
    # in the delivery's one commit
    inserts = [
        (s, many)
        for s, many in statements
        if s.lstrip().upper().startswith("INSERT INTO EVENT_ATT")
    ]
    assert [many for _, many in inserts] == [False], inserts
    with runtime.sessions() as session:
        entries = {event_id: attempt_store.attempts_of(session, event_id) for event_id in ids}
    assert all(len(e) == 1 and e[0]["attempt"] == 1 for e in entries.values())
    for n, event_id in enumerate(ids):
        (entry,) = entries[event_id]
        assert entry["source"] == "worker"
        assert entry["worker"].startswith(f"{socket.gethostname()}/")
        assert entry["started_at"] <= entry["finished_at"]
        if n % 5 == 0:
            assert (entry["outcome"], entry["error_message"]) == (
                "failed",
                f"LookupError: no item {n}",
            )
        else:
            assert (entry["outcome"], entry["error_message"]) == ("processed", None)


def test_a_run_counted_in_advance_is_recorded_lost_then_its_outcome(runtime: Runtime) -> None:
    # Given an event whose first run died (nothing of it was committed)
    event_id = make_event(runtime)["id"]
    policy = runtime.retry_policy
    with unit(runtime) as uow:
        claimed = attempts.begin(uow, event_id)
        assert isinstance(claimed, Attempt)
        # When the delivery that follows counts it in advance, and its own run then succeeds
        counted = attempts.count_in_advance(uow, claimed, policy, "WorkerLostError: signal 9")
        uow.commit()
        with runtime.sessions() as session:
            after_mark = attempt_store.attempts_of(session, event_id)
        again = attempts.reclaim(uow, counted)
        assert again is not None
        save_changes(uow, [attempts.processed(again)])
        uow.commit()
    # Then the dead run is a lost entry, committed with the mark, and the outcome follows it
    assert [(e["attempt"], e["outcome"], e["error_message"]) for e in after_mark] == [
        (1, "lost", "WorkerLostError: signal 9")
    ]
    assert after_mark[0]["started_at"] is None and after_mark[0]["worker"] is None
    with runtime.sessions() as session:
        entries = attempt_store.attempts_of(session, event_id)
    assert [(e["attempt"], e["outcome"]) for e in entries] == [(1, "lost"), (2, "processed")]


def test_the_relay_purges_entries_past_their_retention(runtime: Runtime) -> None:
    # Given an entry older than EVENTBUS_ATTEMPTS_RETENTION_DAYS and a fresh one
    event_id = make_event(runtime)["id"]
    now = datetime.now(UTC)
    old = now - timedelta(days=runtime.settings.attempts_retention_days, minutes=1)
    with transaction(runtime.sessions) as session:
        attempt_store.record(
            session, [attempt_store.Entry(event_id, attempt_store.Outcome.FAILED, old)]
        )
        attempt_store.record(
            session, [attempt_store.Entry(event_id, attempt_store.Outcome.PROCESSED, now)]
        )
    # When the relay purges
    purged = purge_attempts(runtime)
    # Then only the old one is gone
    assert purged == 1
    with runtime.sessions() as session:
        assert [e["outcome"] for e in attempt_store.attempts_of(session, event_id)] == ["processed"]
