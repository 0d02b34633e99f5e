"""The opt-in archive (``EVENTBUS_ARCHIVE_URL``): a history partition is written out before
the retention drops it, and ``eventbus archive restore`` brings it back as history.

EventBridge's archive and replay is the anchor, with one difference: a restore puts events
back as they were (finished), it never sends them; replaying them is a separate, explicit act
(``eventbus replay`` or ``PUT … pending``).

**Format: gzip-compressed JSON lines**, one file per partition (``events-2026-10-01.jsonl.gz``;
the legacy partition ``events-legacy-until-2026-12-04.jsonl.gz``). Chosen over Parquet because:

- any language reads it, and so does a shell: ``zcat events-2026-10-01.jsonl.gz | jq``;
- it is written and read as a stream, one event at a time, in constant memory, whatever the
  day's size; Parquet buffers a row group, and its columns fit nested attempts poorly;
- no new heavy dependency (pyarrow is ~100 MB); gzip and json are in the standard library.
  A columnar scan over years of archives is what Parquet would win; that is a data lake's job,
  and these files load into one (``read_json(..., compression='gzip', lines=True)``).

Each line is one event: every column of ``system_events`` (the seed's fields and the bus's
bookkeeping), timestamps RFC 3339 in UTC, and ``"attempts": [...]``, its attempt history
(every column but ``event_id``), oldest first. Next to it a manifest, ``events-2026-10-01.json``:
the partition and its bounds, how many events and attempts, the file's size and sha256, so
``eventbus archive list`` reads a few hundred bytes per day, and a restore checks the file
before it changes anything.

Written crash-safe: the data goes to a hidden temporary name, is closed (and fsynced on a local
disk), renamed into place, and only then is the manifest written the same way. A file without
its manifest is never listed nor restored, and the partition is dropped only after both are in
place (``bus.storage.partitions.drop``'s ``before``): a crash at any point leaves the partition
in the database, and the next pass writes its archive again.

Storage through fsspec: a plain directory, ``file://``, ``memory://`` (tests), and ``s3://``,
``gs://``… when their fsspec package (s3fs, gcsfs) is installed.

PostgreSQL only: SQLite (``eventbus dev``) deletes rows a batch at a time and has no day to
write out; with ``EVENTBUS_ARCHIVE_URL`` set there, the retention deletes nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

import fsspec

from bus.events.rules import utcnow
from bus.events.schemas import format_timestamp
from bus.runtime import Runtime
from bus.storage import archive_store, partitions
from bus.storage.archive_store import ATTEMPT_COLUMNS, StoredEvent
from bus.storage.db import transaction
from bus.storage.models import EVENT_COLUMNS, EventStatus

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger(__name__)

FORMAT = "eventbus-archive/1"
DATA = ".jsonl.gz"
MANIFEST = ".json"
PREFIX = "events-"
KEEP_DAYS = 7.0
"""How long a restored partition is left alone by the retention, by default."""

RESTORE_BATCH = 1000
"""Events per INSERT on restore (16 parameters each)."""

_UUIDS = frozenset({"id", "tenant_id"})
"""An event's uuid columns (an attempt's ``id`` is a number)."""
_TIMES = frozenset(
    {"created_at", "processed_at", "dispatched_at", "next_attempt_at", "started_at", "finished_at"}
)


class ArchiveError(Exception):
    """An archive could not be written, or a file is not a complete archive."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an archive file holds, kept next to it (``<name>.json``)."""

    file: str
    partition: str
    start: str | None
    """The partition's lower bound (RFC 3339), None for the legacy one's MINVALUE."""
    end: str | None
    events: int
    attempts: int
    size: int
    """The file's bytes."""
    sha256: str
    archived_at: str
    format: str = FORMAT

    @property
    def day(self) -> str:
        """The day for a day's partition, else ``until <end>``."""
        if self.start and self.end:
            lo, hi = datetime.fromisoformat(self.start), datetime.fromisoformat(self.end)
            if hi - lo == timedelta(days=1):
                return lo.date().isoformat()
        return f"until {self.end[:10]}" if self.end else self.partition

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode() + b"\n"

    @classmethod
    def loads(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ArchiveError(f"not an {FORMAT} manifest")
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ArchiveError(f"unreadable manifest: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore did: events and attempts in the file, those newly stored, and the
    partitions they went to (kept from the retention until ``keep_until``)."""

    events: int
    attempts: int
    new_events: int
    new_attempts: int
    partitions: list[str]
    keep_until: datetime


def file_name(partition: partitions.Partition) -> str:
    """``events-2026-10-01.jsonl.gz`` for a day's partition, ``events-legacy-until-<date>``
    for the legacy one, ``events-<partition name>`` for any other."""
    lo, hi = partition.lo, partition.hi
    if lo is not None and hi is not None and hi - lo == timedelta(days=1):
        return f"{PREFIX}{lo.date().isoformat()}{DATA}"
    if partition.name == partitions.LEGACY and hi is not None:
        return f"{PREFIX}legacy-until-{hi.date().isoformat()}{DATA}"
    return f"{PREFIX}{partition.name}{DATA}"


def manifest_name(data_name: str) -> str:
    return data_name.removesuffix(DATA) + MANIFEST


def _plain(value: Any) -> Any:
    """What JSON has no type for: a timestamp (RFC 3339, UTC) or a uuid (text)."""
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not archived")


def encode(event: StoredEvent) -> bytes:
    """One event and its attempts as a line of JSON (``\\n`` included)."""
    line = {name: event.values[name] for name in EVENT_COLUMNS}
    line["attempts"] = [{name: a[name] for name in ATTEMPT_COLUMNS} for a in event.attempts]
    return _ENCODER.encode(line).encode() + b"\n"


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_plain)


def _typed(name: str, value: Any, uuids: frozenset[str] = _UUIDS) -> Any:
    if value is None:
        return None
    if name in _TIMES:
        return datetime.fromisoformat(value).astimezone(UTC)
    if name in uuids:
        return uuid.UUID(value)
    return value


def decode(line: bytes) -> StoredEvent:
    """A line of an archive back to row values (``event_id`` set on each attempt). An event
    still in flight is refused: an archive holds finished events only, and a restored one must
    never be sent again."""
    try:
        data = json.loads(line)
        attempts = data.pop("attempts")
        if set(data) != set(EVENT_COLUMNS):
            raise ArchiveError(f"not an archived event: fields {sorted(data)}")
        values = {name: _typed(name, data[name]) for name in EVENT_COLUMNS}
        rows = [
            {name: _typed(name, a[name], frozenset()) for name in ATTEMPT_COLUMNS} for a in attempts
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"not an archived event: {exc}") from exc
    in_flight = values["status"] == EventStatus.PENDING or (
        values["status"] == EventStatus.FAILED and values["next_attempt_at"] is not None
    )
    if in_flight:
        raise ArchiveError(f"event {values['id']} is still in flight: not an archived event")
    for row in rows:
        row["event_id"] = values["id"]
    return StoredEvent(values, rows)


class _Hashing:
    """A byte stream (either way) that counts and hashes what passes through."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def flush(self) -> None:
        self.raw.flush()


class Archive:
    """The archive at one fsspec URL (a directory when it has no scheme)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._fs, self._root = fsspec.core.url_to_fs(self.url)
        self._local = "file" in _protocols(self._fs)

    def write(self, connection: Connection, partition: partitions.Partition) -> Manifest:
        """Write partition's events and attempts (read in batches on ``connection``, in the
        drop's transaction and under its lock), then its manifest; complete and closed on
        return. Raises :class:`ArchiveError` (the partition is then not dropped)."""
        name = file_name(partition)
        try:
            return self._write(connection, partition, name)
        except Exception as exc:
            log.error(
                "history partition %s kept: its archive %s/%s could not be written (%s); "
                "the next pass tries again",
                partition.name,
                self.url,
                name,
                exc,
            )
            raise ArchiveError(f"archive of {partition.name} not written: {exc}") from exc

    def _write(
        self, connection: Connection, partition: partitions.Partition, name: str
    ) -> Manifest:
        self._fs.makedirs(self._root, exist_ok=True)
        events = attempts = 0
        with self._atomic(name) as raw:
            sink = _Hashing(raw)
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=sink, compresslevel=6, mtime=0
            ) as gz:
                for batch in archive_store.read_partition(connection, partition.name):
                    for event in batch:
                        gz.write(encode(event))
                        events += 1
                        attempts += len(event.attempts)
        manifest = Manifest(
            file=name,
            partition=partition.name,
            start=format_timestamp(partition.lo),
            end=format_timestamp(partition.hi),
            events=events,
            attempts=attempts,
            size=sink.size,
            sha256=sink.sha256.hexdigest(),
            archived_at=format_timestamp(utcnow()) or "",
        )
        with self._atomic(manifest_name(name)) as raw:
            raw.write(manifest.dumps())
        log.info(
            "history partition %s archived: %d events, %d attempts, %d bytes in %s/%s",
            partition.name,
            events,
            attempts,
            sink.size,
            self.url,
            name,
        )
        return manifest

    @contextlib.contextmanager
    def _atomic(self, name: str) -> Iterator[IO[bytes]]:
        """A file written under a hidden temporary name, closed (fsynced when local), then
        renamed to ``name``; removed if the block fails."""
        final = f"{self._root}/{name}"
        temporary = f"{self._root}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            with self._fs.open(temporary, "wb") as raw:
                yield raw
                if self._local:
                    raw.flush()
                    os.fsync(raw.fileno())
            self._fs.mv(temporary, final)
            if self._local:
                _fsync_directory(self._root)
        except BaseException:
            with contextlib.suppress(Exception):
                self._fs.rm(temporary)
            raise

    def manifests(self) -> list[Manifest]:
        """Every complete archive (one with its manifest), oldest first."""
        if not self._fs.exists(self._root):
            return []
        found = []
        for path in self._fs.glob(f"{self._root}/{PREFIX}*{MANIFEST}"):
            manifest = Manifest.loads(self._fs.cat_file(path))
            if self._fs.exists(f"{self._root}/{manifest.file}"):
                found.append(manifest)
        return sorted(found, key=lambda m: (m.start or "", m.end or "", m.file))

    def locate(self, file: str) -> tuple[Any, str]:
        """(filesystem, path) of ``file``: a bare name is one of this archive's."""
        if "/" not in file:
            return self._fs, f"{self._root}/{file}"
        return fsspec.core.url_to_fs(file)  # type: ignore[no-any-return]


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _fsync_directory(path: str) -> None:
    """Make a rename in a local directory survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lines(fs: Any, path: str) -> Iterator[tuple[_Hashing, bytes]]:
    with fs.open(path, "rb") as raw:
        source = _Hashing(raw)
        with gzip.GzipFile(fileobj=source, mode="rb") as gz:
            for line in gz:
                yield source, line
        while source.read(1 << 20):  # whatever gzip did not need, so the hash is the file's
            pass
        yield source, b""


def check(fs: Any, path: str) -> tuple[Manifest, set[date]]:
    """Read an archive once against its manifest (size, sha256, counts, every line), before
    a restore changes anything; returns the manifest and the days its events were made on."""
    data_name = path.rsplit("/", 1)[-1]
    if not data_name.endswith(DATA):
        raise ArchiveError(f"{path}: not an archive file (*{DATA})")
    manifest_path = path.removesuffix(DATA) + MANIFEST
    if not fs.exists(path):
        raise ArchiveError(f"{path}: no such archive")
    if not fs.exists(manifest_path):
        raise ArchiveError(f"{path}: no manifest ({manifest_path}); an incomplete archive")
    manifest = Manifest.loads(fs.cat_file(manifest_path))
    days: set[date] = set()
    events = attempts = 0
    source: _Hashing | None = None
    for source, line in _lines(fs, path):  # noqa: B007 - the last one holds the hash
        if line:
            event = decode(line)
            days.add(event.values["created_at"].date())
            events += 1
            attempts += len(event.attempts)
    assert source is not None
    found = (source.size, source.sha256.hexdigest(), events, attempts)
    wanted = (manifest.size, manifest.sha256, manifest.events, manifest.attempts)
    if found != wanted:
        raise ArchiveError(
            f"{path} does not match its manifest: (bytes, sha256, events, attempts) "
            f"{found} != {wanted}"
        )
    return manifest, days


def restore(
    runtime: Runtime,
    archive: Archive,
    file: str,
    keep: timedelta = timedelta(days=KEEP_DAYS),
    now: datetime | None = None,
) -> Restored:
    """Bring an archived partition back as history: checked against its manifest first, its
    days' partitions made if missing (each in a short transaction of its own), then every
    event and attempt inserted in ONE transaction, through the parent table so the counts
    see them, each stored once however often it is restored. Nothing is sent: the events are
    finished, and no message is made for them. The partitions are kept from the retention
    until ``now + keep``."""
    now = now or utcnow()
    fs, path = archive.locate(file)
    manifest, days = check(fs, path)
    with transaction(runtime.sessions) as session:
        if not partitions.is_partitioned(session.connection()):
            raise ArchiveError("restore needs PostgreSQL's partitioned history (not SQLite)")
    for day in sorted(days):
        with transaction(runtime.sessions) as session:
            # finished events, read and not changed: pages filled whole
            partitions.make_day(session.connection(), day, fillfactor=100)
    new_events = new_attempts = 0
    with transaction(runtime.sessions) as session:
        connection = session.connection()
        batch: list[StoredEvent] = []
        for _source, line in _lines(fs, path):
            if line:
                batch.append(decode(line))
            if batch and (len(batch) == RESTORE_BATCH or not line):
                new_events += archive_store.insert_events(connection, [e.values for e in batch])
                new_attempts += archive_store.insert_attempts(
                    connection, [a for e in batch for a in e.attempts]
                )
                batch = []
        homes = _homes(partitions.partitions(connection), days)
        archive_store.keep(connection, homes, now, now + keep)
    log.info(
        "archive %s restored: %d of %d events and %d of %d attempts were missing; "
        "partitions %s kept until %s",
        path,
        new_events,
        manifest.events,
        new_attempts,
        manifest.attempts,
        ", ".join(homes),
        format_timestamp(now + keep),
    )
    return Restored(manifest.events, manifest.attempts, new_events, new_attempts, homes, now + keep)


def house_strays(runtime: Runtime, before: datetime) -> int:
    """Give the old events waiting in the default partition days of their own (each made in a
    transaction of its own, taking its rows in), so the next passes archive and drop them
    like any day; with an archive, nothing is deleted unarchived. Returns the days made."""
    with transaction(runtime.sessions) as session:
        days = archive_store.stray_days(session.connection(), before)
    made = 0
    for day in days:
        with transaction(runtime.sessions) as session:
            made += partitions.make_day(session.connection(), day)
    return made


def _homes(found: list[partitions.Partition], days: set[date]) -> list[str]:
    """The partitions (not the default) holding ``days``."""
    homes = []
    for p in found:
        if p.default:
            continue
        if any(
            (p.lo is None or p.lo <= partitions.midnight(d))
            and (p.hi is None or partitions.midnight(d) < p.hi)
            for d in days
        ):
            homes.append(p.name)
    return homes
