"""``StreamIngest``: one stream's decode thread, supervision and delivery.

Two threads per stream. The decode thread opens the source, reads it (``ConnectionReader``),
samples, resizes and chunks, and reconnects with exponential backoff and jitter after an end of
stream, an error or a stall. Chunks cross to the delivery thread through a bounded queue with a
named drop policy (drop-oldest for live sources), so a slow ``on_chunk`` never blocks decoding
and memory stays bounded. ``on_status`` is called from the decode thread, except the final event
(ended, failed or stopped), which the delivery thread sends after the last chunk.

    ingest = StreamIngest("cam1", "rtsp://user:pw@cam/live", IngestConfig(), on_chunk, on_status)
    ingest.start(); ...; ingest.stop(); ingest.join(10)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import av

from ingest.backoff import Backoff
from ingest.chunker import Chunker
from ingest.entities import (
    CLOCK_RATE,
    TIME_BASE,
    Chunk,
    DropPolicy,
    Frame,
    IngestConfig,
    StatusEvent,
    StreamStatus,
)
from ingest.errors import IngestError, SourceRefused, SourceUnavailable
from ingest.motion import motion_grid
from ingest.queueing import BoundedQueue
from ingest.reader import ConnectionReader, Outcome, ReadResult
from ingest.sampler import Sampler, to_image
from ingest.skipping import DecodePlanner
from ingest.sources import Source, check_source, open_source, redact_url
from ingest.stats import StatsBox
from ingest.timeline import Timeline

log = logging.getLogger(__name__)

ChunkCallback = Callable[[Chunk], None]
StatusCallback = Callable[[StatusEvent], None]
GET_TIMEOUT_S = 0.2


class StreamIngest:
    """Ingest one stream; ``start()`` returns at once, callbacks report chunks and status."""

    def __init__(
        self, stream_id: str, url: str, config: IngestConfig, on_chunk: ChunkCallback, on_status: StatusCallback,
    ) -> None:
        self.stream_id, self.url, self.config = stream_id, url, config
        self.on_chunk, self.on_status = on_chunk, on_status
        self._stop = threading.Event()
        self._stats = StatsBox()
        self._queue: BoundedQueue[Chunk] = BoundedQueue(config.queue_chunks, DropPolicy.DROP_OLDEST)
        self._final: StatusEvent | None = None
        self._seq = 0
        self._decode = threading.Thread(target=self._decode_main, name=f"ingest-{stream_id}", daemon=True)
        self._deliver = threading.Thread(target=self._deliver_main, name=f"deliver-{stream_id}", daemon=True)

    def __repr__(self) -> str:
        return f"StreamIngest({self.stream_id!r}, {redact_url(self.url)!r})"

    # -- public API --------------------------------------------------------------------------------

    def start(self) -> None:
        self._decode.start()
        self._deliver.start()

    def stop(self) -> None:
        """Ask both threads to finish (idempotent); a blocked read ends within the read timeout."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for both threads; True when they have finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in (self._decode, self._deliver):
            if thread.ident is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.is_alive()

    def is_alive(self) -> bool:
        return self._decode.is_alive() or self._deliver.is_alive()

    @property
    def status(self) -> StreamStatus:
        return self._stats.status

    def stats(self) -> dict[str, Any]:
        """Counters and status as a JSON-ready dict (see ``ingest.stats.IngestStats``)."""
        self._stats.set(queue_depth=len(self._queue))
        return self._stats.snapshot()

    # -- decode thread ------------------------------------------------------------------------------

    def _decode_main(self) -> None:
        final = StatusEvent(self.stream_id, StreamStatus.FAILED, "internal error", time.time())
        try:
            final = self._supervise()
        except Exception as exc:  # a bug must still end the stream with a status, never silently
            log.exception("stream %s: ingest crashed", self.stream_id)
            final = self._event(StreamStatus.FAILED, f"internal error: {type(exc).__name__}")
        finally:
            self._final = final
            self._queue.close()

    def _supervise(self) -> StatusEvent:
        try:
            source = check_source(self.url, self.config)
        except SourceRefused as exc:
            return self._event(StreamStatus.FAILED, str(exc))
        run = _Run(self, source)
        return run.loop()

    def _event(self, status: StreamStatus, reason: str | None, gap: Any = None) -> StatusEvent:
        self._stats.set(status=status, reason=reason)
        return StatusEvent(self.stream_id, status, reason, time.time(), gap)

    def _report(self, status: StreamStatus, reason: str | None, gap: Any = None) -> None:
        event = self._event(status, reason, gap)
        log.info("stream %s: %s (%s)", self.stream_id, status, reason)
        self._call(self.on_status, event)

    def _enqueue(self, chunk: Chunk) -> None:
        dropped = self._queue.put(chunk, self._stop)
        if dropped is not None:
            self._stats.add(chunks_dropped=1, frames_dropped=len(dropped.frames))
            log.warning("stream %s: delivery behind, dropped a chunk of %d frames", self.stream_id, len(dropped.frames))

    # -- delivery thread ----------------------------------------------------------------------------

    def _deliver_main(self) -> None:
        while True:
            chunk = self._queue.get(GET_TIMEOUT_S)
            if chunk is None:
                if self._queue.closed and len(self._queue) == 0:
                    break
                continue
            self._deliver_chunk(chunk)
        final = self._final or self._event(StreamStatus.FAILED, "internal error")
        log.info("stream %s: %s (%s)", self.stream_id, final.status, final.reason)
        self._call(self.on_status, final)

    def _deliver_chunk(self, chunk: Chunk) -> None:
        chunk = replace(chunk, seq=self._seq)  # contiguous even when the queue dropped chunks
        self._seq += 1
        newest = chunk.frames[-1].wall_time if chunk.frames else time.time()
        self._stats.set(lag_seconds=max(0.0, time.time() - newest))
        if self._call(self.on_chunk, chunk):
            self._stats.add(chunks_emitted=1)

    def _call(self, callback: Callable[[Any], None], arg: Any) -> bool:
        try:
            callback(arg)
        except Exception:
            self._stats.add(callback_errors=1)
            log.exception("stream %s: callback %s failed", self.stream_id, getattr(callback, "__name__", callback))
            return False
        return True


class _Run:
    """The decode thread's state for one ingest: connections, timeline, sampler, chunker."""

    def __init__(self, owner: StreamIngest, source: Source) -> None:
        cfg = owner.config
        self.owner, self.source, self.config = owner, source, cfg
        self.timeline = Timeline(live=source.is_live, min_gap_s=max(1.0 / cfg.sample_fps, 0.5))
        self.sampler = Sampler(cfg.sample_fps)
        self.chunker = Chunker(owner.stream_id, cfg.chunk_seconds, 1.0 / cfg.sample_fps)
        self.backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, cfg.backoff_factor, cfg.backoff_jitter)
        self.reader = ConnectionReader(
            cfg, self.timeline, self.sampler, DecodePlanner(cfg.skip), owner._stats, owner._stop,
            self._on_sample, pace=cfg.realtime and not source.is_live,
        )
        self.index = 0
        self.live_reported = False
        self.last_error = ""
        owner._queue.policy = cfg.drop_policy or (
            DropPolicy.BLOCK if not source.is_live and not cfg.realtime else DropPolicy.DROP_OLDEST
        )

    def loop(self) -> StatusEvent:
        owner, ever_connected = self.owner, False
        owner._report(StreamStatus.CONNECTING, f"opening {self.source}")
        while not owner._stop.is_set():
            result = self._connect_and_read()
            ever_connected = ever_connected or (result is not None and result.frames > 0)
            self._flush()
            if owner._stop.is_set():
                break
            final = self._after(result, ever_connected)
            if final is not None:
                return final
        return owner._event(StreamStatus.STOPPED, "stopped by request")

    def _connect_and_read(self) -> ReadResult | None:
        """Open and read once; None when the open failed (the reason is in the stats)."""
        try:
            container = open_source(self.source, self.config)
        except SourceUnavailable as exc:
            self.owner._stats.set(reason=str(exc))
            self.last_error = str(exc)
            return None
        self.owner._stats.add(connects=1)
        self.live_reported = False
        self.timeline.new_segment(_frame_step(container))
        try:
            return self.reader.read(container)
        finally:
            container.close()

    def _after(self, result: ReadResult | None, ever_connected: bool) -> StatusEvent | None:
        """Decide what follows a connection: a final status, or a retry after a backoff delay."""
        reason = result.reason if result is not None else self.last_error
        if not self.source.is_live:
            return self._after_file(result, reason)
        if result is not None and result.frames > 0:
            self.backoff.reset()
        if self.config.max_retries is not None and self.backoff.failures >= self.config.max_retries:
            return self.owner._event(StreamStatus.FAILED, f"gave up after {self.backoff.failures} retries: {reason}")
        delay = self.backoff.next_delay()
        status = StreamStatus.RECONNECTING if ever_connected else StreamStatus.CONNECTING
        self.owner._report(status, f"{reason}; retrying in {delay:.1f} s")
        if ever_connected and result is not None:
            self.owner._stats.add(reconnects=1)
        self.owner._stop.wait(delay)
        return None

    def _after_file(self, result: ReadResult | None, reason: str) -> StatusEvent | None:
        if result is None or result.outcome is not Outcome.EOF:
            return self.owner._event(StreamStatus.FAILED, reason)
        if result.frames == 0:
            return self.owner._event(StreamStatus.FAILED, "no decodable video in the file")
        if self.config.loop:
            return None
        return self.owner._event(StreamStatus.ENDED, "end of file")

    def _on_sample(self, frame: av.VideoFrame, seconds: float) -> None:
        cpu0 = time.thread_time()
        image = to_image(frame, self.config.size_hw)
        motion = motion_grid(frame, *self.config.motion_grid) if self.config.export_motion else None
        self.reader.cpu_ms += (time.thread_time() - cpu0) * 1e3
        now = time.time()
        sample = Frame(image, round(seconds * CLOCK_RATE), TIME_BASE, now, self.index, motion)
        self.index += 1
        self.owner._stats.add(frames_sampled=1)
        self.owner._stats.set(last_frame_wall=now, media_seconds=self.timeline.end)
        if not self.live_reported:
            self._report_live()
        self._charge_cpu()
        chunk = self.chunker.add(sample)
        if chunk is not None:
            self.owner._enqueue(chunk)

    def _report_live(self) -> None:
        self.live_reported = True
        gap = self.timeline.take_gap()
        if gap is not None:
            self.owner._stats.record_gap(gap)
            self.owner._report(StreamStatus.LIVE, f"back after a gap of {gap.seconds:.1f} s", gap)
        else:
            self.owner._report(StreamStatus.LIVE, f"receiving video from {self.source}")

    def _charge_cpu(self) -> None:
        self.chunker.add_decode_time(self.reader.cpu_ms)
        self.owner._stats.add(decode_cpu_seconds=self.reader.cpu_ms / 1e3)
        self.reader.cpu_ms = 0.0

    def _flush(self) -> None:
        self._charge_cpu()
        chunk = self.chunker.flush()
        if chunk is not None:
            self.owner._enqueue(chunk)


def _frame_step(container: av.container.InputContainer) -> float:
    rate = container.streams.video[0].average_rate or container.streams.video[0].guessed_rate
    return float(1 / rate) if rate else 0.0


__all__ = ["StreamIngest", "IngestError"]
