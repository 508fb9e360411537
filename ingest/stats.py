"""Counters of one ingest, updated by its threads and read by ``StreamIngest.stats()``."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ingest.entities import Gap, StreamStatus

GAP_HISTORY = 32  # gaps kept for display; the count and total seconds cover all of them


@dataclass
class IngestStats:
    status: StreamStatus = StreamStatus.CONNECTING
    reason: str | None = None
    frames_read: int = 0  # video packets demuxed from the source
    frames_decoded: int = 0
    frames_skipped: int = 0  # packets never sent to the decoder (decode skipping)
    frames_sampled: int = 0
    frames_dropped: int = 0  # sampled frames lost in dropped chunks
    chunks_emitted: int = 0
    chunks_dropped: int = 0  # by the queue's drop policy (workers or the callback fell behind)
    decode_errors: int = 0  # packets the decoder rejected (e.g. cut off by a disconnect)
    callback_errors: int = 0
    connects: int = 0
    reconnects: int = 0
    gap_count: int = 0
    gap_seconds: float = 0.0
    lag_seconds: float = 0.0  # wall time from decoding the newest frame of a chunk to handing it over
    behind_live_seconds: float = 0.0  # live sources: wall clock minus the media time of the newest sample
    media_seconds: float = 0.0  # end of the ingest timeline so far
    decode_cpu_seconds: float = 0.0
    queue_depth: int = 0
    last_frame_wall: float | None = None
    started_wall: float = field(default_factory=time.time)
    gaps: deque[Gap] = field(default_factory=lambda: deque(maxlen=GAP_HISTORY))


class StatsBox:
    """IngestStats behind a lock; ``snapshot()`` is a JSON-ready dict."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = IngestStats()

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    def set(self, **values: Any) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self._stats, name, value)

    def record_gap(self, gap: Gap) -> None:
        with self._lock:
            self._stats.gaps.append(gap)
            self._stats.gap_count += 1
            self._stats.gap_seconds += gap.seconds

    @property
    def status(self) -> StreamStatus:
        with self._lock:
            return self._stats.status

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            gaps = list(self._stats.gaps)
            data = asdict(replace(self._stats, gaps=deque()))
        data["status"] = str(data["status"])
        data["gaps"] = [[round(g.t_start, 3), round(g.t_end, 3)] for g in gaps]
        last = data["last_frame_wall"]
        data["last_frame_age_seconds"] = None if last is None else max(0.0, time.time() - last)
        return data
