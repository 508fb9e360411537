"""Keeps one StreamIngest running per active stream and turns its chunks into queued work.

Runs inside ``vidmem serve`` (embedded) or ``vidmem ingest`` (distributed). Every second it
compares the active streams in the database with its running ingests, starts the missing ones
and stops those whose stream was stopped. Chunks go through ``dispatch.submit_chunk`` (blob,
row, commit, enqueue, backpressure); status events go to the stream's row.

``active`` is the desired state, set only through the API: a shutdown of the service stops the
ingests but leaves ``active`` alone, so the next start resumes every stream that was live, with
chunks continuing after the stored ones. Only ``ended`` and ``failed`` are final for an active
stream; an inactive one the manager is not running is settled as ``stopped``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import func, select

from ingest.entities import Chunk, IngestConfig, StatusEvent
from ingest.runner import StreamIngest
from store import repo
from store.credentials import CredentialsUnavailable, seal_plaintext, unseal
from store.db import session_scope
from store.models import ChunkRecord, Stream, StreamStatus
from workers import latest_frame, stream_settings
from workers.dispatch import submit_chunk
from workers.housekeeping import Housekeeper
from workers.redis_watch import RedisWatch
from workers.runtime import Runtime
from workers.signaling import OfferServer
from workers.sources import ingest_config

log = logging.getLogger(__name__)

FINAL_STATUSES = {StreamStatus.ended, StreamStatus.failed, StreamStatus.stopped}
# An active stream in another status is wanted: ``stopped`` with active=True is a service shutdown.
DONE_STATUSES = {StreamStatus.ended, StreamStatus.failed}
SHUTDOWN_REASON = "service shut down; resumes at its next start"


@dataclass
class Running:
    ingest: StreamIngest
    seq_base: int  # chunks continue after what is already stored, across service restarts
    time_base: float
    config: IngestConfig  # the stream's sampling and chunking when started: a change restarts the ingest
    epoch_due: bool = True  # the next chunk sets streams.media_epoch (first chunk, and after each reconnect)
    retiring: bool = False  # stopped to restart with new settings: its final status is not the stream's


class IngestManager:
    def __init__(self, runtime: Runtime, poll_seconds: float = 1.0, stats_seconds: float = 2.0) -> None:
        self.runtime = runtime.for_role("ingest")  # its own connection pool: API load cannot starve ingest
        self.housekeeper = Housekeeper(self.runtime)  # orphaned blobs, old chunk rows
        self.redis_watch = RedisWatch(self.runtime)  # what a Redis restart lost: queued again or a recorded gap
        self.poll_seconds = poll_seconds
        self.stats_seconds = stats_seconds
        self._stats_written = 0.0
        self._running: dict[str, Running] = {}
        self._stop = threading.Event()
        self._shutting_down = False
        self._thread = threading.Thread(target=self._loop, name="ingest-manager", daemon=True)
        # with Redis, the API (possibly on another host) reaches this process's WebRTC streams through it
        self.offers = OfferServer(self.runtime.redis) if self.runtime.redis is not None else None

    def start(self) -> None:
        self._thread.start()
        if self.offers is not None:
            self.offers.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        """Shut down: ingests stop, their streams stay active so that the next start resumes them."""
        self._shutting_down = True
        self._stop.set()
        if self.offers is not None:
            self.offers.stop()
        if self._thread.ident is not None:  # a manager driven by sync() alone has no thread
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
                self.housekeeper.due()
                self.redis_watch.due()
            except Exception:
                log.exception("ingest manager sync failed")
            self._stop.wait(self.poll_seconds)

    def sync(self) -> None:
        """Start ingests for active streams, stop those of streams stopped through the API.

        An inactive stream that is not running (stopped before its ingest started, or while the
        service was down) is settled as ``stopped`` so that it never stays ``connecting``.
        """
        for stream_id in [sid for sid, r in self._running.items() if not r.ingest.is_alive()]:
            del self._running[stream_id]  # finished on its own (ended or failed): its status says so
        with session_scope(self.runtime.sessions) as session:
            streams = repo.list_streams(session)
            seal_plaintext(streams, self.runtime.settings)  # credentials of rows stored before migration 0002
            wanted = {s.id: (s, self._config(s)) for s in streams if s.active and s.status not in DONE_STATUSES}
            stopped = [s.id for s in streams if not s.active and s.id in self._running]
            unsettled = [s.id for s in streams
                         if not s.active and s.id not in self._running and s.status not in FINAL_STATUSES]
            known = {s.id for s in streams}
        for stream_id in [sid for sid in self._running if sid not in known]:  # its row was deleted
            self._running.pop(stream_id).ingest.stop()  # (a WebRTC stream no ingest took in time)
        for stream_id in stopped:
            self._running.pop(stream_id).ingest.stop()
            self._status(stream_id, StreamStatus.stopped, "stopped by request")
        self._retire_changed(wanted)
        for stream_id in unsettled:
            self._status(stream_id, StreamStatus.stopped, "stopped by request")
        for stream_id, (row, config) in wanted.items():
            if stream_id not in self._running:
                try:
                    url = unseal(row, self.runtime.settings)  # decrypted only here, for the ingest
                except CredentialsUnavailable as exc:
                    self._status(stream_id, StreamStatus.failed, str(exc))
                    continue
                self._start(stream_id, url, config)

    def _config(self, stream: Stream) -> IngestConfig:
        """The stream's ingest configuration: the deployment's, with the stream's own sampling and chunking."""
        own = stream_settings.effective(self.runtime.settings, stream.settings)
        return replace(ingest_config(self.runtime.settings, loop=stream.loop), sample_fps=own.sample_fps,
                       chunk_seconds=own.chunk_seconds, export_motion=own.wants_motion)

    def _retire_changed(self, wanted: dict[str, tuple[Stream, IngestConfig]]) -> None:
        """Stop the ingests whose stream's settings changed; a later sync, once one has finished, starts it anew.

        Started only after the old one has finished, so that its last chunks are stored before the
        new ingest reads where chunks resume (seq and time).
        """
        for stream_id, (_, config) in wanted.items():
            running = self._running.get(stream_id)
            if running is not None and not running.retiring and _restart_key(running.config) != _restart_key(config):
                log.info("stream %s: settings changed; restarting its ingest", stream_id)
                running.retiring = True
                running.ingest.stop()

    def write_stats(self, force: bool = False) -> None:
        """Copy each running ingest's counters (frames, drops, reconnects, lag, gaps) to its row."""
        now = time.monotonic()
        if not force and now - self._stats_written < self.stats_seconds:
            return
        self._stats_written = now
        snapshots = {sid: self._stats_of(sid, r.ingest) for sid, r in list(self._running.items())}
        with session_scope(self.runtime.sessions) as session:
            for stream_id, stats in snapshots.items():
                repo.set_stream_stats(session, stream_id=stream_id, stats=stats)

    def _start(self, stream_id: str, url: str, config: IngestConfig) -> None:
        seq_base, time_base = self._resume_point(stream_id)
        ingest = StreamIngest(
            stream_id, url, config,
            on_chunk=lambda chunk: self._on_chunk(stream_id, chunk),
            on_status=lambda event: self._on_status(stream_id, ingest, event),
        )
        self._running[stream_id] = Running(ingest, seq_base, time_base, config)
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
        self._note_media(stream_id, running, chunk)
        submit_chunk(
            self.runtime, stream_id=stream_id, seq=running.seq_base + chunk.seq,
            t_start=running.time_base + chunk.t_start, t_end=running.time_base + chunk.t_end,
            images=images, timestamps=timestamps, motion=motion,
            timings={
                "decode_ms": float(getattr(chunk, "decode_ms", 0.0)),
                "submit_ms": (time.perf_counter() - t0) * 1e3,
            },
        )

    def _on_status(self, stream_id: str, ingest: StreamIngest, event: StatusEvent) -> None:
        """Write an ingest's status, unless the manager has let go of it.

        An ingest stopped through the API is dropped from ``_running`` at once and its stream
        marked ``stopped``; its late final event must not overwrite a stream started again since.
        At shutdown the stream stays active and its reason says it resumes.
        """
        running = self._running.get(stream_id)
        if running is None or running.ingest is not ingest or running.retiring:
            return
        if str(event.status) == StreamStatus.live:
            running.epoch_due = True  # a (re)connect anchors the timeline anew
        reason = event.reason
        if self._shutting_down and str(event.status) == StreamStatus.stopped:
            reason = SHUTDOWN_REASON
        self._status(stream_id, event.status, reason, self._stats_of(stream_id, ingest))

    def _note_media(self, stream_id: str, running: Running, chunk: Chunk) -> None:
        """Keep the chunk's last frame as the stream's latest, and its media epoch when one is due.

        ``media_epoch`` is the wall-clock time of stream second 0: the first frame's arrival minus its
        stream time, taken at the first chunk of each ingest and after each (re)connect, where the
        timeline anchors anew (``ingest.timeline``). Neither may hold up the chunk: failures are logged.
        """
        try:
            latest_frame.keep(self.runtime, stream_id, chunk.frames[-1].image)
            if running.epoch_due:
                first = chunk.frames[0]
                epoch = first.wall_time - (running.time_base + first.seconds)
                with session_scope(self.runtime.sessions) as session:
                    repo.set_media_epoch(session, stream_id=stream_id, epoch=datetime.fromtimestamp(epoch, UTC))
                running.epoch_due = False
        except Exception:
            log.warning("stream %s: latest frame or media epoch not stored", stream_id, exc_info=True)

    def _stats_of(self, stream_id: str, ingest: StreamIngest) -> dict:
        """The ingest's counters plus the chunks that could not be stored (``chunks_lost``, by reason)."""
        return {**ingest.stats(), **self.runtime.chunk_losses.stats(stream_id)}

    def _status(self, stream_id: str, status: str, reason: str | None, stats: dict | None = None) -> None:
        with session_scope(self.runtime.sessions) as session:
            repo.set_stream_status(session, stream_id=stream_id, status=str(status), reason=reason, stats=stats)

    def is_idle(self, stream_id: str) -> bool:
        """True when the stream's ingest has finished (ended, failed or stopped)."""
        running = self._running.get(stream_id)
        return running is None or not running.ingest.is_alive()


def _restart_key(config: IngestConfig) -> tuple[float, float, bool]:
    """What per-stream settings change in an ingest's configuration (the rest is the deployment's)."""
    return config.sample_fps, config.chunk_seconds, config.export_motion
