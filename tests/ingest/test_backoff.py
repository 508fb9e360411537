"""Exponential backoff with jitter."""

from __future__ import annotations

import random

import pytest

from ingest.backoff import Backoff


def test_backoff_when_failures_repeat_doubles_up_to_the_cap():
    backoff = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_when_jitter_set_spreads_delays_within_bounds():
    backoff = Backoff(initial=1.0, maximum=100.0, jitter=0.2, rng=random.Random(0))
    delays = []
    for _ in range(50):
        delays.append(backoff.next_delay())
        backoff.reset()
    assert all(0.8 <= d <= 1.2 for d in delays) and len(set(delays)) > 40


def test_backoff_when_reset_starts_again_from_initial():
    backoff = Backoff(initial=0.5, maximum=4.0, jitter=0.0)
    backoff.next_delay()
    backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.5) and backoff.failures == 1
