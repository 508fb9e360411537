"""Chunk windows, flushes across reconnects, and seq."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.chunker import Chunker
from ingest.entities import CLOCK_RATE, TIME_BASE, Frame


def _frame(seconds: float, index: int = 0) -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), round(seconds * CLOCK_RATE), TIME_BASE, 0.0, index)


def _feed(chunker: Chunker, times: list[float]) -> list:  # type: ignore[type-arg]
    return [c for c in (chunker.add(_frame(t)) for t in times) if c is not None]


def test_chunker_when_frames_cross_windows_closes_aligned_chunks():
    chunker = Chunker("s", chunk_seconds=2.0, frame_period=0.5)
    chunks = _feed(chunker, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    assert [(c.seq, c.t_start, c.t_end, len(c.frames)) for c in chunks] == [(0, 0.0, 2.0, 4), (1, 2.0, 4.0, 4)]


def test_chunker_when_flushed_mid_window_ends_at_the_last_frame_slot_and_never_overlaps():
    # given a chunk flushed at a disconnect, then frames of the same window after the reconnect
    chunker = Chunker("s", chunk_seconds=4.0, frame_period=0.5)
    _feed(chunker, [0.0, 0.5, 1.0])
    first = chunker.flush()
    chunks = _feed(chunker, [1.5, 3.5, 4.0])
    # then the flushed chunk ends where its last frame's slot ends, and the next one starts there
    assert (first.seq, first.t_start, first.t_end) == (0, 0.0, 1.5)
    assert (chunks[0].seq, chunks[0].t_start, chunks[0].t_end) == (1, 1.5, 4.0)


def test_chunker_when_frames_skip_windows_leaves_no_empty_chunks():
    chunker = Chunker("s", chunk_seconds=1.0, frame_period=0.5)
    chunks = _feed(chunker, [0.0, 7.2, 9.0])
    assert [(c.seq, c.t_start) for c in chunks] == [(0, 0.0), (1, 7.0)]


def test_chunker_when_decode_time_charged_reports_it_once():
    chunker = Chunker("s", chunk_seconds=1.0, frame_period=1.0)
    chunker.add_decode_time(3.5)
    _feed(chunker, [0.0])
    chunk = chunker.flush()
    assert chunk.decode_ms == pytest.approx(3.5) and chunker.flush() is None
