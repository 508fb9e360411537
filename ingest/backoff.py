"""Exponential backoff with jitter for reconnects."""

from __future__ import annotations

import random


class Backoff:
    """``initial * factor**n`` capped at ``maximum``, each delay spread by +-``jitter`` (a fraction)."""

    def __init__(
        self, initial: float, maximum: float, factor: float = 2.0, jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        base = min(self.maximum, self.initial * self.factor**self.failures)
        self.failures += 1
        spread = base * self.jitter
        return max(0.0, min(self.maximum, base + self._rng.uniform(-spread, spread)))

    def reset(self) -> None:
        """After a connection that delivered video: start again from ``initial``."""
        self.failures = 0
