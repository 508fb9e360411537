"""Keeps one StreamIngest running per active stream and turns its chunks into queued work.

Runs inside ``vidmem serve`` (embedded) or ``vidmem ingest`` (distributed). Every second it
compares the active streams in the database with its running ingests, starts the missing ones
and stops those whose stream was stopped. Chunks go through ``dispatch.submit_chunk`` (blob,
row, commit, enqueue, backpressure); status events go to the stream's row.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select

from ingest.entities import Chunk, StatusEvent
from ingest.runner import StreamIngest
from store import repo
from store.db import session_scope
from store.models import ChunkRecord, StreamStatus
from workers.dispatch import submit_chunk
from workers.runtime import Runtime
from workers.sources import ingest_config

log = logging.getLogger(__name__)

FINAL_STATUSES = {StreamStatus.ended, StreamStatus.failed, StreamStatus.stopped}


@dataclass
class Running:
    ingest: StreamIngest
    seq_base: int  # chunks continue after what is already stored, across service restarts
    time_base: float


class IngestManager:
    def __init__(self, runtime: Runtime, poll_seconds: float = 1.0, stats_seconds: float = 2.0) -> None:
        self.runtime = runtime
        self.poll_seconds = poll_seconds
        self.stats_seconds = stats_seconds
        self._stats_written = 0.0
        self._running: dict[str, Running] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ingest-manager", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for running in self._running.values():
            running.ingest.stop()
        for running in self._running.values():
            running.ingest.join(10)
        self._running.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
                self.write_stats()
            except Exception:
                log.exception("ingest manager sync failed")
            self._stop.wait(self.poll_seconds)

    def sync(self) -> None:
        """Start ingests for active streams, stop those of streams stopped through the API."""
        for stream_id in [sid for sid, r in self._running.items() if not r.ingest.is_alive()]:
            del self._running[stream_id]  # finished on its own (ended or failed): its status says so
        with session_scope(self.runtime.sessions) as session:
            streams = repo.list_streams(session)
            wanted = {s.id: (s.source_url, s.loop) for s in streams if s.active and s.status not in FINAL_STATUSES}
            stopped = [s.id for s in streams if not s.active and s.id in self._running]
        for stream_id in stopped:
            self._running.pop(stream_id).ingest.stop()
            self._status(stream_id, StreamStatus.stopped, "stopped by request")
        for stream_id, (url, loop) in wanted.items():
            if stream_id not in self._running:
                self._start(stream_id, url, loop)

    def write_stats(self, force: bool = False) -> None:
        """Copy each running ingest's counters (frames, drops, reconnects, lag, gaps) to its row."""
        now = time.monotonic()
        if not force and now - self._stats_written < self.stats_seconds:
            return
        self._stats_written = now
        snapshots = {sid: r.ingest.stats() for sid, r in list(self._running.items())}
        with session_scope(self.runtime.sessions) as session:
            for stream_id, stats in snapshots.items():
                repo.set_stream_stats(session, stream_id=stream_id, stats=stats)

    def _start(self, stream_id: str, url: str, loop: bool) -> None:
        seq_base, time_base = self._resume_point(stream_id)
        ingest = StreamIngest(
            stream_id, url, ingest_config(self.runtime.settings, loop=loop),
            on_chunk=lambda chunk: self._on_chunk(stream_id, chunk),
            on_status=lambda event: self._on_status(stream_id, event),
        )
        self._running[stream_id] = Running(ingest, seq_base, time_base)
        ingest.start()
        log.info("stream %s: ingest started (seq from %d)", stream_id, seq_base)

    def _resume_point(self, stream_id: str) -> tuple[int, float]:
        with session_scope(self.runtime.sessions) as session:
            row = session.execute(
                select(func.max(ChunkRecord.seq), func.max(ChunkRecord.t_end)).where(ChunkRecord.stream_id == stream_id)
            ).one()
        return (row[0] + 1, float(row[1])) if row[0] is not None else (0, 0.0)

    def _on_chunk(self, stream_id: str, chunk: Chunk) -> None:
        running = self._running.get(stream_id)
        if running is None:
            return
        t0 = time.perf_counter()
        images = np.stack([frame.image for frame in chunk.frames])
        timestamps = np.array([frame.seconds for frame in chunk.frames], dtype=np.float64) + running.time_base
        motions = [frame.motion for frame in chunk.frames]
        motion = np.stack(motions).astype(np.float32) if all(m is not None for m in motions) else None
        submit_chunk(
            self.runtime, stream_id=stream_id, seq=running.seq_base + chunk.seq,
            t_start=running.time_base + chunk.t_start, t_end=running.time_base + chunk.t_end,
            images=images, timestamps=timestamps, motion=motion,
            timings={
                "decode_ms": float(getattr(chunk, "decode_ms", 0.0)),
                "submit_ms": (time.perf_counter() - t0) * 1e3,
            },
        )

    def _on_status(self, stream_id: str, event: StatusEvent) -> None:
        running = self._running.get(stream_id)
        stats = running.ingest.stats() if running else None
        self._status(stream_id, event.status, event.reason, stats)

    def _status(self, stream_id: str, status: str, reason: str | None, stats: dict | None = None) -> None:
        with session_scope(self.runtime.sessions) as session:
            repo.set_stream_status(session, stream_id=stream_id, status=str(status), reason=reason, stats=stats)

    def is_idle(self, stream_id: str) -> bool:
        """True when the stream's ingest has finished (ended, failed or stopped)."""
        running = self._running.get(stream_id)
        return running is None or not running.ingest.is_alive()
