"""RetryPolicy: backoff with equal jitter, its windows and its cap."""

from __future__ import annotations

import itertools
import random

import pytest

from bus.delivery.retry import RetryPolicy


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
