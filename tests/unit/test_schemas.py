"""Timestamps in and out, the patterns of the input rules, and a page cut to its budget."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bus.errors import InvalidField
from bus.events import schemas
from bus.events.schemas import format_timestamp, is_text, parse_timestamp
from bus.read.pages import page_of

# --- Timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2023, 4, 1, 15, 5, tzinfo=UTC), "2023-04-01T15:05:00Z"),
        (datetime(2023, 4, 1, 15, 5, 0, 250000, tzinfo=UTC), "2023-04-01T15:05:00.250000Z"),
        (
            datetime(2023, 4, 1, 17, 5, tzinfo=timezone(timedelta(hours=2))),
            "2023-04-01T15:05:00Z",
        ),
        (
            datetime(2023, 4, 1, 0, 30, tzinfo=timezone(timedelta(hours=-5))),
            "2023-04-01T05:30:00Z",
        ),
        (None, None),
    ],
)
def test_format_timestamp_is_rfc3339_in_utc(value: datetime | None, expected: str | None) -> None:
    assert format_timestamp(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-04-01T15:05:00Z", datetime(2023, 4, 1, 15, 5, tzinfo=UTC)),
        ("2023-04-01t15:05:00z", datetime(2023, 4, 1, 15, 5, tzinfo=UTC)),
        ("2023-04-01T17:05:00+02:00", datetime(2023, 4, 1, 15, 5, tzinfo=UTC)),
        ("2023-04-01T15:05:00.123456Z", datetime(2023, 4, 1, 15, 5, 0, 123456, tzinfo=UTC)),
        ("2023-04-01T15:05:00.1234567Z", datetime(2023, 4, 1, 15, 5, 0, 123456, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_gives_aware_utc(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text, "processed_at")

    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "2023-02-30T00:00:00Z",
        "2023-04-01T24:00:01Z",
        "2023-04-01T15:05:00",  # RFC 3339 needs the zone
        "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 once in UTC
        None,
        1680361500,
        ["2023-04-01T15:05:00Z"],
    ],
    ids=repr,
)
def test_parse_timestamp_refuses_with_the_fields_name(value: object) -> None:
    with pytest.raises(InvalidField) as refused:
        parse_timestamp(value, "processed_at")

    assert refused.value.message == "Invalid processed_at"
    assert refused.value.status_code == 400


@pytest.mark.parametrize(
    "text", ["2023-04-01T15:05:00Z", "1999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z"]
)
def test_a_utc_timestamp_survives_a_round_trip(text: str) -> None:
    assert format_timestamp(parse_timestamp(text, "t")) == text


@pytest.mark.parametrize(
    ("value", "storable"),
    [("plain", True), ("é𝄞", True), ("", True), ("a\x00b", False), ("\ud800", False)],
    ids=repr,
)
def test_is_text(value: str, storable: bool) -> None:
    assert is_text(value) is storable


# --- The patterns: one rule for the parsers and the document ---------------------------------


def test_the_blank_class_is_what_strip_removes() -> None:
    # IDENTIFIER_PATTERN's "not blank" is spelled as a class; it must be str.strip's whitespace
    spaces = {chr(c) for c in range(0x110000) if chr(c).isspace()}
    controls = {chr(c) for c in range(0x20)} | {"\x7f"}
    blank_only = re.compile(f"^[{schemas._SPACE}]+$")
    assert {c for c in spaces - controls if not blank_only.fullmatch(c)} == set()
    assert {c for c in map(chr, range(0x3100)) if blank_only.fullmatch(c)} == spaces - controls


@pytest.mark.parametrize(
    ("value", "valid"),
    [("inventory_updated", True), ("é 𝄞", True), (" a ", True), ("  ", False), ("a\nb", False),
     ("\x1b[31m", False), ("a\x7f", False), ("", False)],
    ids=repr,
)  # fmt: skip
def test_the_identifier_pattern(value: str, valid: bool) -> None:
    assert bool(re.fullmatch(schemas.IDENTIFIER_PATTERN, value)) is valid


# --- A page cut to the response budget -------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "limit", "fitted", "expected"),
    [(1, 100, 37, (1, 37)), (2, 50, 47, (3, 25)), (2, 1000, 63, (21, 50)), (3, 7, 3, (8, 2)),
     (5, 13, 4, (14, 4)), (2, 7, 3, (8, 1))],
)  # fmt: skip
def test_a_cut_page_names_where_it_starts(
    page: int, limit: int, fitted: int, expected: tuple[int, int]
) -> None:
    query = schemas.ListQuery(filters={}, page=page, limit=limit)
    events = [b"{}"] * fitted

    cut = page_of(query, events, 10_000, cut=True)

    assert (cut.page, cut.limit) == expected
    assert (cut.page - 1) * cut.limit == query.offset  # the same first event
    assert len(cut.events) == cut.limit <= fitted
