"""How long the bus waits before it tries a failed event again."""

from __future__ import annotations

import random
from dataclasses import dataclass

from bus.settings import Settings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with equal jitter: after n failures wait between d/2 and d,
    d = base·2ⁿ⁻¹, clamped to ``max_seconds``.

    Equal jitter spreads a burst of failures over time yet never lets a wait be shorter than the
    one before it (each window starts where the previous one ended); the clamp comes after the
    jitter so this holds past the cap too.
    """

    max_attempts: int
    base_seconds: float
    max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.retry_max_attempts, settings.retry_base_seconds, settings.retry_max_seconds
        )

    def delay(self, failures: int, rng: random.Random | None = None) -> float | None:
        """Seconds until the next attempt after ``failures`` failed ones; None once exhausted."""
        if failures >= self.max_attempts:
            return None
        window = self.base_seconds * 2.0 ** (failures - 1)
        jitter: float = (rng or random).uniform(0, window / 2)
        return min(self.max_seconds, window / 2 + jitter)
