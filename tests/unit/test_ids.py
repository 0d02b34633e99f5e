"""Event ids that name their time (bus.events.ids): UUIDv7 as RFC 9562 lays it out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from bus.events.ids import EARLIEST, LATEST, created_at_of, new_event_id, window

AT = datetime(2026, 12, 3, 16, 5, 7, 123456, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def test_an_id_is_a_version_7_uuid_naming_its_millisecond() -> None:
    event_id = new_event_id(AT)
    assert event_id.version == 7
    assert event_id.variant == uuid.RFC_4122
    assert created_at_of(event_id) == AT.replace(microsecond=123000)
    # the first 48 bits are the Unix time in milliseconds, big-endian (RFC 9562, 5.7)
    assert int(event_id.hex[:12], 16) == int(AT.timestamp() * 1000)


def test_ids_of_one_millisecond_differ_and_later_ids_sort_after() -> None:
    same = {new_event_id(AT) for _ in range(1000)}
    assert len(same) == 1000
    assert max(same) < new_event_id(AT + MS)


def test_an_id_of_another_version_names_no_time() -> None:
    assert created_at_of(uuid.uuid4()) is None
    assert created_at_of(uuid.UUID("00000000-0000-0000-0000-000000000000")) is None


def test_the_window_holds_every_created_at_of_its_ids() -> None:
    ids = [new_event_id(AT), new_event_id(AT + timedelta(hours=3))]
    lo, hi = window(ids)
    assert lo == AT.replace(microsecond=123000)
    assert hi == AT.replace(microsecond=123000) + timedelta(hours=3) + MS
    assert lo <= AT < hi  # created_at (microseconds) within its id's millisecond
    # one id of no time, and the window is every time there is
    assert window([*ids, uuid.uuid4()]) == (EARLIEST, LATEST)
    assert window([]) == (EARLIEST, LATEST)


def test_spans_divide_a_day_from_midnight() -> None:
    from bus.storage.partitions import DAY, span_name, span_start

    five = timedelta(minutes=5)
    assert span_start(AT, five) == datetime(2026, 12, 3, 16, 5, tzinfo=UTC)
    assert span_start(AT, DAY) == datetime(2026, 12, 3, tzinfo=UTC)
    assert span_name(span_start(AT, DAY), DAY) == "system_events_p20261203"
    assert span_name(span_start(AT, five), five) == "system_events_p20261203_1605"
