"""The archive's file format and its writing, on fsspec's in-memory filesystem (no server):
a line per event with its attempts, a manifest that lists and checks it, a file that is
either whole or absent."""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import fsspec
import pytest

from bus.maintenance import archive
from bus.maintenance.archive import Archive, ArchiveError
from bus.storage import archive_store, partitions
from bus.storage.archive_store import StoredEvent
from bus.storage.models import EVENT_COLUMNS

DAY = date(2026, 10, 1)
CREATED = datetime(2026, 10, 1, 12, 0, 0, 123456, tzinfo=UTC)


def event(n: int = 0, **overrides: Any) -> StoredEvent:
    values: dict[str, Any] = {
        "id": uuid.UUID(int=n + 1),
        "tenant_id": uuid.UUID(int=99),
        "event_type": "inventory_updated",
        "source_module": "inventory",
        "target_module": "warehouse",
        "entity_type": "inventory_item",
        "entity_id": f"item-{n}",
        "event_data": {"new_quantity": 95, "note": "é ✓", "nested": [1, {"a": None}]},
        "status": "failed",
        "retry_count": 3,
        "created_at": CREATED + timedelta(seconds=n),
        "processed_at": CREATED + timedelta(seconds=n, milliseconds=5),
        "error_message": "boom",
        "dispatched_at": CREATED,
        "next_attempt_at": None,
        "request_id": "req-1",
        **overrides,
    }
    attempts = [
        {
            "id": 10 + a,
            "attempt": a,
            "started_at": None if a == 1 else CREATED,
            "finished_at": CREATED + timedelta(seconds=a),
            "outcome": "failed",
            "error_message": "boom",
            "worker": None if a == 1 else "host/1",
            "source": "worker",
        }
        for a in (1, 2)
    ]
    return StoredEvent(values, attempts)


def test_a_line_holds_every_column_and_its_attempts_and_reads_back_the_same() -> None:
    original = event()
    line = archive.encode(original)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    data = json.loads(line)
    assert set(data) == {*EVENT_COLUMNS, "attempts"}
    assert data["created_at"] == "2026-10-01T12:00:00.123456Z"  # RFC 3339, UTC
    assert data["id"] == str(uuid.UUID(int=1))
    assert data["attempts"][0]["started_at"] is None
    assert "event_id" not in data["attempts"][0]

    back = archive.decode(line)
    assert back.values == original.values
    assert back.attempts == [{**a, "event_id": original.values["id"]} for a in original.attempts]


@pytest.mark.parametrize(
    "overrides",
    [{"status": "pending"}, {"status": "failed", "next_attempt_at": CREATED}],
    ids=["pending", "retry-to-come"],
)
def test_an_event_in_flight_is_never_read_back(overrides: dict[str, Any]) -> None:
    with pytest.raises(ArchiveError, match="in flight"):
        archive.decode(archive.encode(event(**overrides)))


@pytest.mark.parametrize("line", [b"{}", b"not json", b'{"attempts": []}', b"[1]"])
def test_a_line_that_is_no_event_is_refused(line: bytes) -> None:
    with pytest.raises(ArchiveError):
        archive.decode(line)


def test_file_names_say_the_day() -> None:
    lo = partitions.midnight(DAY)
    day = partitions.Partition(partitions.day_name(DAY), lo, lo + timedelta(days=1))
    assert archive.file_name(day) == "events-2026-10-01.jsonl.gz"
    legacy = partitions.Partition(partitions.LEGACY, None, lo)
    assert archive.file_name(legacy) == "events-legacy-until-2026-10-01.jsonl.gz"
    odd = partitions.Partition("system_events_by_hand", lo, lo + timedelta(days=2))
    assert archive.file_name(odd) == "events-system_events_by_hand.jsonl.gz"
    assert archive.manifest_name("events-2026-10-01.jsonl.gz") == "events-2026-10-01.json"


@pytest.fixture
def url() -> Iterator[str]:
    """A memory:// directory of the test's own."""
    url = f"memory://archive-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def fake_partition(monkeypatch: pytest.MonkeyPatch, events: list[StoredEvent], fail_at: int = -1):  # type: ignore[no-untyped-def]
    """read_partition without a database: ``events`` in batches of 2, raising after
    ``fail_at`` batches when given."""

    def read(_connection: object, _name: str, batch: int = 2) -> Iterator[list[StoredEvent]]:
        for n, start in enumerate(range(0, len(events), 2)):
            if n == fail_at:
                raise OSError("disk full")
            yield events[start : start + 2]

    monkeypatch.setattr(archive_store, "read_partition", read)
    lo = partitions.midnight(DAY)
    return partitions.Partition(partitions.day_name(DAY), lo, lo + timedelta(days=1))


def test_a_written_archive_is_listed_and_checks_against_its_manifest(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [event(n) for n in range(5)]
    partition = fake_partition(monkeypatch, events)
    store = Archive(url)

    manifest = store.write(None, partition)  # type: ignore[arg-type]

    fs = fsspec.filesystem("memory")
    raw = fs.cat_file(f"{url}/events-2026-10-01.jsonl.gz")
    assert manifest.size == len(raw) and manifest.sha256 == hashlib.sha256(raw).hexdigest()
    assert (manifest.events, manifest.attempts, manifest.day) == (5, 10, "2026-10-01")
    lines = gzip.decompress(raw).splitlines()
    assert [archive.decode(line).values for line in lines] == [e.values for e in events]
    assert store.manifests() == [manifest]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(url, detail=False)) == [
        "events-2026-10-01.json",
        "events-2026-10-01.jsonl.gz",
    ]  # no temporary file left
    checked, days = archive.check(*store.locate("events-2026-10-01.jsonl.gz"))
    assert checked == manifest and days == {DAY}


def test_a_changed_file_fails_its_check(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Archive(url)
    store.write(None, fake_partition(monkeypatch, [event(n) for n in range(3)]))  # type: ignore[arg-type]
    fs = fsspec.filesystem("memory")
    path = f"{url}/events-2026-10-01.jsonl.gz"
    lines = gzip.decompress(fs.cat_file(path)).splitlines(keepends=True)
    fs.pipe_file(path, gzip.compress(b"".join(lines[:2])))  # a line lost
    with pytest.raises(ArchiveError, match="does not match its manifest"):
        archive.check(fs, path)
    fs.rm(f"{url}/events-2026-10-01.json")
    with pytest.raises(ArchiveError, match="no manifest"):
        archive.check(fs, path)


def test_a_write_that_fails_leaves_nothing_that_looks_complete(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Archive(url)
    partition = fake_partition(monkeypatch, [event(n) for n in range(6)], fail_at=2)
    with pytest.raises(ArchiveError, match="disk full"):
        store.write(None, partition)  # type: ignore[arg-type]
    fs = fsspec.filesystem("memory")
    assert fs.ls(url, detail=False) == []  # the temporary file is gone too
    assert store.manifests() == []
