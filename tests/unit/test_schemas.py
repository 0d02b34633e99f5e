"""Timestamps in and out, and the retry schedule."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bus.errors import InvalidField
from bus.schemas import format_timestamp, is_text, parse_timestamp
from bus.service import RetryPolicy

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
        ("2023-04-01T15:05:00", datetime(2023, 4, 1, 15, 5, tzinfo=UTC)),  # no zone: UTC
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


# --- The retry schedule ----------------------------------------------------------------------


class Extreme(random.Random):
    """A random source that always draws the lowest (or the highest) value."""

    def __init__(self, *, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


POLICY = RetryPolicy(max_attempts=10, base_seconds=2.0, max_seconds=60.0)


def test_the_first_retry_waits_between_half_the_base_and_the_base() -> None:
    assert POLICY.delay(1, Extreme(high=False)) == 1.0
    assert POLICY.delay(1, Extreme(high=True)) == 2.0


def windows(policy: RetryPolicy, failures: range) -> list[tuple[float, float]]:
    """(shortest, longest) possible wait after each number of failures."""
    return [
        (policy.delay(n, Extreme(high=False)) or 0.0, policy.delay(n, Extreme(high=True)) or 0.0)
        for n in failures
    ]


def test_delays_grow_whatever_the_jitter_below_the_cap() -> None:
    # 2·2⁴ = 32 is the last uncapped delay of POLICY (cap 60).
    spans = windows(POLICY, range(1, 6))

    assert [high for _, high in spans] == [2.0, 4.0, 8.0, 16.0, 32.0]
    for (_, longest), (shortest_next, _) in itertools.pairwise(spans):
        assert shortest_next >= longest  # the next wait is never shorter, whatever the draws


def test_the_window_never_moves_back() -> None:
    spans = windows(POLICY, range(1, 10))

    for (low, high), (low_next, high_next) in itertools.pairwise(spans):
        assert low_next >= low and high_next >= high


def test_delays_grow_whatever_the_jitter_across_the_cap() -> None:
    spans = windows(POLICY, range(1, 10))

    for (_, longest), (shortest_next, _) in itertools.pairwise(spans):
        assert shortest_next >= longest


def test_delays_stop_at_the_cap() -> None:
    # After 6 failures the window is [32, 64], clamped to [32, 60]; from 7 on it is all 60.
    assert POLICY.delay(6, Extreme(high=True)) == 60.0
    assert POLICY.delay(6, Extreme(high=False)) == 32.0
    for n in range(7, 10):
        assert POLICY.delay(n, Extreme(high=True)) == 60.0
        assert POLICY.delay(n, Extreme(high=False)) == 60.0


def test_random_delays_stay_in_their_window() -> None:
    rng = random.Random(1234)
    for n in range(1, 10):
        window = 2.0 * 2 ** (n - 1)
        for _ in range(50):
            delay = POLICY.delay(n, rng)
            assert delay is not None and min(60.0, window / 2) <= delay <= min(60.0, window)


@pytest.mark.parametrize("failures", [10, 11, 100])
def test_no_delay_once_the_attempts_are_spent(failures: int) -> None:
    assert POLICY.delay(failures) is None


def test_a_single_attempt_is_never_retried() -> None:
    assert RetryPolicy(max_attempts=1, base_seconds=1, max_seconds=1).delay(1) is None


def test_the_last_retry_is_still_scheduled() -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=100)

    assert [policy.delay(n, Extreme(high=True)) for n in (1, 2, 3)] == [1.0, 2.0, None]
