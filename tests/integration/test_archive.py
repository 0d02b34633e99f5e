"""The opt-in archive (issue 19, item 4): with ``EVENTBUS_ARCHIVE_URL`` set, the retention
writes a day's events and attempts out before it drops the day, keeps the day when it cannot;
``eventbus archive restore`` brings the day back as finished history (counts exact, nothing
sent, stored once however often), kept from the retention for a while; ``eventbus archive
list`` shows what is archived."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text

from bus.broker.queues import queue_name
from bus.events.schemas import ListQuery
from bus.maintenance import archive, resend, retention
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import event_queries, partitions
from bus.storage.db import transaction
from bus.storage.migrate import upgrade
from bus.storage.models import EVENT_COLUMNS, EventStatus, event_attempts
from tests.support.factories import make_events
from tests.support.processes import eventbus, settings_env
from tests.support.queues import queue_length
from tests.support.services import make_settings
from tests.support.tokens import TENANT_A
from tests.support.workers import WORKER_SETTINGS

TODAY = datetime.now(UTC).date()
OLD = TODAY - timedelta(days=45)
OLDER = TODAY - timedelta(days=46)


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def settings_overrides(archive_dir: Path) -> dict[str, Any]:
    return {**WORKER_SETTINGS, "archive_url": str(archive_dir)}


@pytest.fixture
def made_days(runtime: Runtime) -> Iterator[list[date]]:
    """Days a test makes partitions for; whatever is left of them, and the record of their
    restore, is dropped afterwards."""
    made: list[date] = []
    yield made
    with runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM restored_days"))
        for day in made:
            conn.execute(text(f"DROP TABLE IF EXISTS {partitions.day_name(day)}"))


def old_events(n: int, day: date, **overrides: Any) -> list[dict[str, Any]]:
    """Finished events made on ``day`` (version-7 ids naming their created_at)."""
    from bus.events.ids import new_event_id
    from tests.support.factories import event_values

    rows = []
    for i in range(n):
        created = partitions.midnight(day) + timedelta(hours=12, seconds=i, microseconds=i)
        values = {
            "status": EventStatus.PROCESSED,
            "processed_at": created + timedelta(milliseconds=3),
            "dispatched_at": created,
            "request_id": f"req-{i}",
            "event_data": {"n": i, "text": "é ✓", "nested": {"list": [1, None]}},
            **overrides,
        }
        rows.append(event_values(id=new_event_id(created), created_at=created, **values))
    return rows


def fill_day(runtime: Runtime, day: date, made: list[date]) -> list[uuid.UUID]:
    """A day's partition with 6 processed and 3 failed events (no retry to come), two
    attempts for each failed one and one for each processed one."""
    made.append(day)
    with runtime.engine.begin() as conn:
        assert partitions.make_day(conn, day)
    events = make_events(runtime, old_events(6, day))
    events += make_events(
        runtime,
        old_events(3, day, status=EventStatus.FAILED, event_type="x", error_message="no"),
    )
    attempts = []
    for e in events:
        failed = e["status"] == EventStatus.FAILED
        for n in (1, 2) if failed else (1,):
            attempts.append(
                {
                    "event_id": e["id"],
                    "attempt": n,
                    "started_at": e["created_at"] if n == 1 else None,
                    "finished_at": e["created_at"] + timedelta(seconds=n),
                    "outcome": "failed" if failed else "processed",
                    "error_message": "no" if failed else None,
                    "worker": "host/1" if n == 1 else None,
                    "source": "worker" if n == 1 else "api",
                }
            )
    with runtime.engine.begin() as conn:
        conn.execute(insert(event_attempts), attempts)
    return [e["id"] for e in events]


def rows_of(runtime: Runtime, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Every column of the events (as the database gives them) and their attempts."""
    with runtime.engine.connect() as conn:
        events = conn.execute(
            text(f"SELECT {', '.join(EVENT_COLUMNS)} FROM system_events WHERE id = ANY(:ids)"),  # noqa: S608
            {"ids": ids},
        ).mappings()
        found = {row["id"]: dict(row) for row in events}
        for attempt in conn.execute(
            text(
                "SELECT * FROM event_attempts WHERE event_id = ANY(:ids) ORDER BY event_id, attempt"
            ),
            {"ids": ids},
        ).mappings():
            found[attempt["event_id"]].setdefault("attempts", []).append(dict(attempt))
    for row in found.values():
        for name, value in row.items():
            if isinstance(value, datetime):
                row[name] = value.astimezone(UTC)
        for attempt in row.get("attempts", []):
            for name, value in attempt.items():
                if isinstance(value, datetime):
                    attempt[name] = value.astimezone(UTC)
    return found


def without_attempt_ids(rows: dict[uuid.UUID, dict[str, Any]]) -> dict[uuid.UUID, Any]:
    return {
        key: {**row, "attempts": [{**a, "id": None} for a in row.get("attempts", [])]}
        for key, row in rows.items()
    }


def names(runtime: Runtime) -> list[str]:
    with runtime.engine.connect() as conn:
        return [p.name for p in partitions.partitions(conn)]


def total(runtime: Runtime, **filters: str) -> int:
    with transaction(runtime.sessions) as session:
        return event_queries.count_events(session, TENANT_A, ListQuery(filters))


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        eventbus("archive", *args),
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def read_archive(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rb") as f:
        return [json.loads(line) for line in f]


def test_retention_archives_a_day_with_every_event_and_attempt_then_drops_it(
    runtime: Runtime, made_days: list[date], archive_dir: Path
) -> None:
    # Given an old day of 9 finished events and 12 attempts, and a recent event
    ids = fill_day(runtime, OLD, made_days)
    before = rows_of(runtime, ids)
    make_events(runtime, old_events(2, TODAY))
    # When the retention passes
    assert retention.Retention(runtime).run() == 9
    # Then the day is gone from the database, and its archive holds every row as it was
    assert partitions.day_name(OLD) not in names(runtime)
    assert total(runtime) == 2
    data = archive_dir / f"events-{OLD.isoformat()}.jsonl.gz"
    lines = read_archive(data)
    assert len(lines) == 9 and sum(len(line["attempts"]) for line in lines) == 12
    in_order = sorted(ids, key=lambda i: (before[i]["created_at"], i))  # (created_at, id)
    assert [line["id"] for line in lines] == [str(i) for i in in_order]
    raw_lines = gzip.decompress(data.read_bytes()).splitlines()
    decoded = {e.values["id"]: e for e in map(archive.decode, raw_lines)}
    for event_id, row in before.items():
        stored = decoded[event_id]
        assert stored.values == {name: row[name] for name in EVENT_COLUMNS}
        assert stored.attempts == row["attempts"]  # every column, the id and event_id too
    manifest = json.loads((archive_dir / f"events-{OLD.isoformat()}.json").read_text())
    raw = data.read_bytes()
    assert manifest["events"] == 9 and manifest["attempts"] == 12
    assert manifest["size"] == len(raw) and manifest["sha256"] == hashlib.sha256(raw).hexdigest()
    assert manifest["partition"] == partitions.day_name(OLD)
    assert sorted(p.name for p in archive_dir.iterdir()) == sorted(
        [data.name, f"events-{OLD.isoformat()}.json"]
    )


def test_a_day_whose_archive_cannot_be_written_is_kept_until_it_can(
    runtime: Runtime,
    made_days: list[date],
    archive_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an old day, and an archive URL beneath a plain file (no directory can be made)
    fill_day(runtime, OLD, made_days)
    archive_dir.parent.mkdir(exist_ok=True)
    archive_dir.write_text("in the way")
    keeper = retention.Retention(runtime)
    # When the retention passes, it fails (a chore failure), and the day stays whole
    with caplog.at_level(logging.ERROR), pytest.raises(archive.ArchiveError):
        keeper.run()
    assert any("kept: its archive" in r.getMessage() for r in caplog.records)
    assert partitions.day_name(OLD) in names(runtime)
    assert total(runtime) == 9
    # When the archive can be written, the next pass archives and drops the day
    archive_dir.unlink()
    assert keeper.run() == 9
    assert partitions.day_name(OLD) not in names(runtime)
    assert len(read_archive(archive_dir / f"events-{OLD.isoformat()}.jsonl.gz")) == 9


def test_restore_brings_the_day_back_once_without_sending_and_keeps_it(
    runtime: Runtime, settings: Settings, made_days: list[date], archive_dir: Path
) -> None:
    # Given a day archived and dropped
    ids = fill_day(runtime, OLD, made_days)
    before = rows_of(runtime, ids)
    counts = {s: total(runtime, status=s) for s in ("processed", "failed")}
    assert counts == {"processed": 6, "failed": 3}
    assert retention.Retention(runtime).run() == 9
    assert total(runtime) == 0
    with runtime.engine.begin() as conn:  # and its attempts purged (their own retention)
        conn.execute(text("DELETE FROM event_attempts"))
    name = f"events-{OLD.isoformat()}.jsonl.gz"

    # When it is restored
    done = cli(settings, "restore", name)
    assert done.returncode == 0, done.stderr
    assert "restored 9 of 9 events and 12 of 12 attempts" in done.stdout
    assert partitions.day_name(OLD) in done.stdout

    # Then every event and attempt is back as it was (an attempt's id is a new one)
    assert partitions.day_name(OLD) in names(runtime)
    assert without_attempt_ids(rows_of(runtime, ids)) == without_attempt_ids(before)
    # and the counts are exact
    assert total(runtime) == 9
    assert {s: total(runtime, status=s) for s in counts} == counts
    assert total(runtime, event_type="x") == 3
    # and nothing was sent, nor will the relay send anything
    assert queue_length(queue_name("warehouse", settings.queue_prefix)) == 0
    assert resend.run_once(runtime) == 0
    assert queue_length(queue_name("warehouse", settings.queue_prefix)) == 0

    # When it is restored again, nothing is stored twice
    again = cli(settings, "restore", str(archive_dir / name), "--keep-days", "2")
    assert again.returncode == 0, again.stderr
    assert "restored 0 of 9 events and 0 of 12 attempts" in again.stdout
    assert total(runtime) == 9
    with runtime.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM system_events")).scalar_one() == 9
        assert conn.execute(text("SELECT count(*) FROM event_attempts")).scalar_one() == 12

    # The next retention passes leave it alone until its keep time (2 days, the last restore's)
    keeper = retention.Retention(runtime)
    assert keeper.run() == 0
    assert keeper.run(now=datetime.now(UTC) + timedelta(days=1)) == 0
    assert partitions.day_name(OLD) in names(runtime)
    # and past it, the day goes again
    assert keeper.run(now=datetime.now(UTC) + timedelta(days=2, hours=1)) == 9
    assert partitions.day_name(OLD) not in names(runtime)
    assert total(runtime) == 0


def test_a_damaged_archive_is_not_restored(
    runtime: Runtime, settings: Settings, made_days: list[date], archive_dir: Path
) -> None:
    fill_day(runtime, OLD, made_days)
    assert retention.Retention(runtime).run() == 9
    data = archive_dir / f"events-{OLD.isoformat()}.jsonl.gz"
    lines = gzip.decompress(data.read_bytes()).splitlines(keepends=True)
    data.write_bytes(gzip.compress(b"".join(lines[1:])))
    done = cli(settings, "restore", data.name)
    assert done.returncode == 1
    assert "does not match its manifest" in done.stderr
    assert total(runtime) == 0


def test_archive_list_shows_each_archived_day(
    runtime: Runtime, settings: Settings, made_days: list[date], archive_dir: Path
) -> None:
    fill_day(runtime, OLDER, made_days)
    fill_day(runtime, OLD, made_days)
    made_days.append(OLD - timedelta(days=2))  # the retention gives it a partition
    make_events(runtime, old_events(4, OLD - timedelta(days=2)))  # no partition: default
    assert retention.Retention(runtime).run() == 18

    done = cli(settings, "list")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["day", "events", "attempts", "bytes", "file"]
    assert len(rows) == 2
    for row, day in zip(rows, (OLDER, OLD), strict=True):
        shown_day, events, attempts, size, path = row.split()
        data = archive_dir / f"events-{day.isoformat()}.jsonl.gz"
        assert (shown_day, events, attempts) == (day.isoformat(), "9", "12")
        assert int(size) == data.stat().st_size and path == str(data)

    unset = cli(settings.model_copy(update={"archive_url": None}), "list")
    assert unset.returncode == 2 and "EVENTBUS_ARCHIVE_URL is not set" in unset.stderr


def test_old_events_in_the_default_partition_are_archived_not_deleted(
    runtime: Runtime, made_days: list[date], archive_dir: Path
) -> None:
    # Given old finished events no partition covers (they wait in the default partition)
    long_ago = TODAY - timedelta(days=400)
    made_days.append(long_ago)
    make_events(runtime, old_events(4, long_ago))
    keeper = retention.Retention(runtime)
    # A pass gives them a day of their own (nothing deleted unarchived), the next archives it
    assert keeper.run() == 0
    assert total(runtime) == 4
    assert partitions.day_name(long_ago) in names(runtime)
    assert keeper.run() == 4
    assert len(read_archive(archive_dir / f"events-{long_ago.isoformat()}.jsonl.gz")) == 4
    assert total(runtime) == 0


def test_on_sqlite_an_archive_url_keeps_every_row(tmp_path: Path, archive_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    upgrade(url)
    for archived, left in ((str(archive_dir), 3), (None, 0)):
        runtime = Runtime(make_settings(url, archive_url=archived))
        try:
            make_events(runtime, old_events(3, OLD))
            retention.Retention(runtime).run()
            with runtime.engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM system_events")).scalar_one() == left
        finally:
            runtime.close()
    assert not archive_dir.exists()
