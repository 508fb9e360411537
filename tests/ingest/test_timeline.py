"""The ingest timeline across file loops and live reconnects."""

from __future__ import annotations

from fractions import Fraction

import pytest

from ingest.timeline import Timeline

TB = Fraction(1, 1000)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_timeline_when_file_loops_continues_one_frame_after_the_last():
    timeline = Timeline(live=False, min_gap_s=0.5, clock=FakeClock())
    timeline.new_segment(frame_step=0.1)
    first = [timeline.seconds(pts, TB) for pts in (5000, 5100, 5900)]  # a file starting at 5 s
    timeline.new_segment(frame_step=0.1)
    second = [timeline.seconds(pts, TB) for pts in (5000, 5100)]
    assert first == pytest.approx([0.0, 0.1, 0.9]) and second == pytest.approx([1.0, 1.1])
    assert timeline.take_gap() is None


def test_timeline_when_live_source_returns_after_outage_records_gap():
    # given a live source seen for 2 s
    clock = FakeClock()
    timeline = Timeline(live=True, min_gap_s=0.5, clock=clock)
    timeline.new_segment(0.04)
    assert timeline.seconds(0, TB) == pytest.approx(0.0)
    assert timeline.seconds(2000, TB) == pytest.approx(2.0)
    # when it comes back 5 s later with timestamps restarting at 0
    clock.now += 7.0
    timeline.new_segment(0.04)
    back = timeline.seconds(0, TB)
    # then time continues at the wall-clock position and the gap is reported once
    assert back == pytest.approx(7.0)
    gap = timeline.take_gap()
    assert (gap.t_start, gap.t_end) == pytest.approx((2.0, 7.0)) and timeline.take_gap() is None


def test_timeline_when_live_source_has_no_timestamps_uses_the_wall_clock():
    clock = FakeClock()
    timeline = Timeline(live=True, min_gap_s=0.5, clock=clock)
    clock.now += 1.5
    assert timeline.seconds(None, None) == pytest.approx(1.5)
    clock.now += 0.25
    assert timeline.seconds(None, None) == pytest.approx(1.75)


def test_timeline_when_timestamps_jump_back_reanchors_instead_of_going_back():
    timeline = Timeline(live=False, min_gap_s=0.5, clock=FakeClock())
    timeline.new_segment(0.1)
    timeline.seconds(0, TB)
    timeline.seconds(10000, TB)
    assert timeline.seconds(0, TB) == pytest.approx(10.1)
