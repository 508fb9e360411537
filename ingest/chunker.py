"""Group sampled frames into chunks of ``chunk_seconds`` of media time.

Chunk windows are aligned on multiples of ``chunk_seconds`` of the ingest timeline. A chunk is
closed when a frame of a later window arrives, or by ``flush()`` (disconnect, end, stop); chunks
never overlap, even when a window is split by a reconnect. ``seq`` counts the chunks made by this
chunker, which lives as long as the ingest, so it continues across reconnects and file loops.
"""

from __future__ import annotations

import math

from ingest.entities import Chunk, Frame


class Chunker:
    def __init__(self, stream_id: str, chunk_seconds: float, frame_period: float, first_seq: int = 0) -> None:
        self.stream_id = stream_id
        self.chunk_seconds = chunk_seconds
        self.frame_period = frame_period  # the sampler's slot, 1 / sample_fps seconds
        self.next_seq = first_seq
        self._frames: list[Frame] = []
        self._window = 0  # index of the open window
        self._last_end = -math.inf  # t_end of the previous chunk
        self._decode_ms = 0.0

    def add_decode_time(self, milliseconds: float) -> None:
        """Decode CPU time to charge to the chunk being filled."""
        self._decode_ms += milliseconds

    def add(self, frame: Frame) -> Chunk | None:
        """Add a frame; returns the chunk it closed, if any."""
        window = math.floor(frame.seconds / self.chunk_seconds + 1e-9)
        closed = self._close(end=self._window_end()) if self._frames and window != self._window else None
        if not self._frames:
            self._window = window
        self._frames.append(frame)
        return closed

    def flush(self) -> Chunk | None:
        """Close the open chunk early: it ends where the sampler slot of its last frame ends."""
        if not self._frames:
            return None
        slot = math.floor(self._frames[-1].seconds / self.frame_period + 1e-6)
        end = min(self._window_end(), (slot + 1) * self.frame_period)
        return self._close(end=end)

    def _window_end(self) -> float:
        return (self._window + 1) * self.chunk_seconds

    def _close(self, end: float) -> Chunk:
        start = max(self._window * self.chunk_seconds, self._last_end)
        start = min(start, self._frames[0].seconds)
        chunk = Chunk(
            stream_id=self.stream_id, seq=self.next_seq, t_start=start, t_end=max(end, start),
            frames=tuple(self._frames), decode_ms=self._decode_ms,
        )
        self.next_seq += 1
        self._last_end = chunk.t_end
        self._frames = []
        self._decode_ms = 0.0
        return chunk
