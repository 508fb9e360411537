"""One monotonic media timeline per ingest, across file loops and reconnects.

Each connection (a "segment") has its own timestamps, or none at all (some RTSP servers send no
pts). The first timestamp seen in a segment anchors it: a file loop continues right after the
previous segment; a live source starts at the wall-clock time elapsed since the ingest started,
so the time the source was away shows up as a gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction

from ingest.entities import Gap

BACKWARD_JUMP_S = 1.0  # a source whose timestamps go back further than this is re-anchored


class Timeline:
    def __init__(self, live: bool, min_gap_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.live = live
        self.min_gap_s = min_gap_s  # shorter pauses between segments are not reported as gaps
        self._clock = clock
        self._t0 = clock()
        self._offset: float | None = None
        self._end = 0.0  # latest media time handed out
        self._step = 0.0  # one source frame, the distance between two file loops
        self._pending_gap: Gap | None = None
        self._segments = 0

    def elapsed(self) -> float:
        """Wall-clock seconds since the ingest started."""
        return self._clock() - self._t0

    @property
    def end(self) -> float:
        return self._end

    def new_segment(self, frame_step: float = 0.0) -> None:
        """The next timestamp starts a new connection or file loop."""
        self._offset = None
        self._step = frame_step

    def seconds(self, pts: int | None, time_base: Fraction | None) -> float:
        """Media seconds on the ingest timeline for a source timestamp (None: by the wall clock)."""
        if pts is None or time_base is None:
            if not self.live:  # a file without timestamps: one frame step after the other
                return self._advance(self._anchor_once(0.0) if self._offset is None else self._end + self._step)
            source = self.elapsed()
        else:
            source = float(pts * time_base)
        if self._offset is None or source + self._offset < self._end - BACKWARD_JUMP_S:
            self._anchor_once(source)
        assert self._offset is not None
        return self._advance(source + self._offset)

    def frame_seconds(self, pts: int | None, time_base: Fraction | None) -> float:
        """Like ``seconds`` for a decoded frame: mapped with the segment's offset, never re-anchoring.

        A decoder may hand a frame out several packets later (B-frame reordering, skipped packets),
        so an early timestamp here is not a jump back of the source.
        """
        if self._offset is None or pts is None or time_base is None:
            return self.seconds(pts, time_base)
        return float(pts * time_base) + self._offset

    def take_gap(self) -> Gap | None:
        """The gap recorded when the current segment was anchored, once."""
        gap, self._pending_gap = self._pending_gap, None
        return gap

    def _anchor_once(self, source: float) -> float:
        """Start a segment: now for live sources, right after the last frame for files."""
        start = self._end + self._step if self._segments else 0.0
        if self.live:
            start = max(start, self.elapsed())
        if self._segments and start - self._end > self.min_gap_s:
            self._pending_gap = Gap(self._end, start)
        self._segments += 1
        self._offset = start - source
        return start

    def _advance(self, value: float) -> float:
        self._end = max(self._end, value)
        return value
