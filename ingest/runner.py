"""``StreamIngest``: one stream's decode thread, supervision and delivery.

The decode thread opens the source (``ingest.sources``), reads it (``ingest.reader``) through the
frame pipeline (sampler, one resize, chunker), and reconnects with exponential backoff and jitter
after an end of stream, an error or a stall; a live source that has never delivered a frame fails
after ``first_connect_retries`` failed connects (a wrong URL), one that has been live only after
``max_retries`` (None: a camera that drops is retried forever). Chunks reach ``on_chunk`` from a delivery thread
through a bounded queue with a named drop policy (``ingest.delivery``): drop-oldest for live
sources, block for files read as fast as possible. ``webrtc://<name>`` URLs are received from a
browser instead (``ingest.webrtc``), through the same pipeline.

    ingest = StreamIngest("cam1", "rtsp://user:pw@cam/live", IngestConfig(), on_chunk, on_status)
    ingest.start(); ...; ingest.stop(); ingest.join(10)
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import av

from ingest.backoff import Backoff
from ingest.delivery import ChunkCallback, Delivery, StatusCallback
from ingest.entities import DropPolicy, IngestConfig, StatusEvent, StreamStatus
from ingest.errors import IngestError, SourceRefused, SourceUnavailable
from ingest.pipeline import FramePipeline
from ingest.reader import ConnectionReader, Outcome, ReadResult, keyframe_times
from ingest.skipping import DecodePlanner
from ingest.sources import Source, SourceKind, check_source, open_source, redact_url
from ingest.stats import StatsBox
from ingest.timeline import Timeline

log = logging.getLogger(__name__)


class StreamIngest:
    """Ingest one stream; ``start()`` returns at once, callbacks report chunks and status."""

    def __init__(
        self, stream_id: str, url: str, config: IngestConfig, on_chunk: ChunkCallback, on_status: StatusCallback,
    ) -> None:
        self.stream_id, self.url, self.config = stream_id, url, config
        self._stop = threading.Event()
        self._stats = StatsBox()
        self.delivery = Delivery(stream_id, on_chunk, on_status, self._stats, config.queue_chunks)
        self._decode = threading.Thread(target=self._decode_main, name=f"ingest-{stream_id}", daemon=True)

    def __repr__(self) -> str:
        return f"StreamIngest({self.stream_id!r}, {redact_url(self.url)!r})"

    @property
    def on_chunk(self) -> ChunkCallback:
        return self.delivery.on_chunk

    @property
    def on_status(self) -> StatusCallback:
        return self.delivery.on_status

    def start(self) -> None:
        self._decode.start()
        self.delivery.start()

    def stop(self) -> None:
        """Ask the ingest to finish (idempotent); a blocked read ends within about twice the read timeout."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the ingest's threads; True when they have finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._decode.ident is not None:
            self._decode.join(timeout)
        self.delivery.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.is_alive()

    def is_alive(self) -> bool:
        return self._decode.is_alive() or self.delivery.is_alive()

    @property
    def status(self) -> StreamStatus:
        return self._stats.status

    def stats(self) -> dict[str, Any]:
        """Counters and status as a JSON-ready dict (see ``ingest.stats.IngestStats``)."""
        self._stats.set(queue_depth=len(self.delivery.queue))
        return self._stats.snapshot()

    def _decode_main(self) -> None:
        final = self.delivery.event(StreamStatus.FAILED, "internal error")
        try:
            final = self._supervise()
        except Exception as exc:  # a bug must still end the stream with a status, never silently
            log.exception("stream %s: ingest crashed", self.stream_id)
            final = self.delivery.event(StreamStatus.FAILED, f"internal error: {type(exc).__name__}")
        finally:
            self.delivery.finish(final)

    def _supervise(self) -> StatusEvent:
        try:
            source = check_source(self.url, self.config)
        except SourceRefused as exc:
            return self.delivery.event(StreamStatus.FAILED, str(exc))
        if source.kind is SourceKind.WEBRTC:
            from ingest.webrtc import WebRTCReceiver  # aiortc is imported only for browser streams

            return WebRTCReceiver(self.stream_id, self.config, self._stats, self.delivery, self._stop).run()
        return _Supervisor(self, source).loop()


class _Supervisor:
    """The decode thread of a PyAV source: connect, read, decide, back off, again."""

    def __init__(self, owner: StreamIngest, source: Source) -> None:
        cfg = owner.config
        self.owner, self.source, self.config, self.delivery = owner, source, cfg, owner.delivery
        self.stop = owner._stop
        timeline = Timeline(live=source.is_live, min_gap_s=max(1.0 / cfg.sample_fps, 0.5))
        self.pipeline = FramePipeline(owner.stream_id, cfg, timeline, owner._stats, owner.delivery, str(source),
                                      self.stop)
        self.backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, cfg.backoff_factor, cfg.backoff_jitter)
        self.planner = DecodePlanner(cfg.skip)
        self.reader = ConnectionReader(cfg, self.pipeline, self.planner, self.stop,
                                       pace=cfg.realtime and _may_be_recorded(source))
        self.last_error = ""
        self.delivery.queue.policy = cfg.drop_policy or (
            DropPolicy.BLOCK if not source.is_live and not cfg.realtime else DropPolicy.DROP_OLDEST
        )

    def loop(self) -> StatusEvent:
        ever_connected = False
        self.delivery.report(StreamStatus.CONNECTING, f"opening {self.source}")
        while not self.stop.is_set():
            try:
                result = self._connect_and_read()
            except SourceRefused as exc:  # the policy is re-checked at every connect: a name may re-resolve
                return self.delivery.event(StreamStatus.FAILED, str(exc))
            ever_connected = ever_connected or (result is not None and result.frames > 0)
            self.pipeline.flush()
            if self.stop.is_set():
                break
            final = self._after(result, ever_connected)
            if final is not None:
                return final
        return self.delivery.event(StreamStatus.STOPPED, "stopped by request")

    def _connect_and_read(self) -> ReadResult | None:
        """Open and read once; None when the open failed (the reason is in ``last_error``)."""
        try:
            container = open_source(self.source, self.config)
        except SourceUnavailable as exc:
            self.last_error = str(exc)
            return None
        self.owner._stats.add(connects=1)
        if self.source.kind is SourceKind.FILE and self.planner.gop_seconds is None:
            self._prime_planner()
        if self.source.is_live:  # a file loop is not a new connection: no second LIVE event
            self.pipeline.new_connection()
        self.pipeline.timeline.new_segment(_frame_step(container))
        try:
            return self.reader.read(container)
        finally:
            container.close()

    def _prime_planner(self) -> None:
        """A file's keyframe interval is known from its packets: no need to decode its first GOP in full."""
        try:
            with av.open(self.source.path) as probe:
                self.planner.prime(keyframe_times(probe))
        except (av.FFmpegError, OSError):
            pass  # the real open reports the problem

    def _after(self, result: ReadResult | None, ever_connected: bool) -> StatusEvent | None:
        """What follows a connection: a final status, or a retry after a backoff delay."""
        reason = result.reason if result is not None else self.last_error
        if not self.source.is_live:
            return self._after_file(result, reason)
        if result is not None and result.frames > 0:
            self.backoff.reset()
        give_up = self._give_up(reason, ever_connected)
        if give_up is not None:
            return self.delivery.event(StreamStatus.FAILED, give_up)
        delay = self.backoff.next_delay()
        status = StreamStatus.RECONNECTING if ever_connected else StreamStatus.CONNECTING
        self.delivery.report(status, f"{reason}; retrying in {delay:.1f} s")
        if ever_connected and result is not None:
            self.owner._stats.add(reconnects=1)
        self.stop.wait(delay)
        return None

    def _give_up(self, reason: str, ever_connected: bool) -> str | None:
        """Why the stream fails now, or None to retry: out of retries, or never connected at all."""
        retries, first = self.config.max_retries, self.config.first_connect_retries
        if retries is not None and self.backoff.failures >= retries:
            return f"gave up after {self.backoff.failures} retries: {reason}"
        tries = self.backoff.failures + 1  # failed connects in a row, this one included
        if not ever_connected and first is not None and tries >= first:
            return f"could not connect after {tries} tries: {reason}"
        return None

    def _after_file(self, result: ReadResult | None, reason: str) -> StatusEvent | None:
        if result is None or result.outcome is not Outcome.EOF:
            return self.delivery.event(StreamStatus.FAILED, reason)
        if result.frames == 0:
            return self.delivery.event(StreamStatus.FAILED, "no decodable video in the file")
        if self.config.loop:
            return None
        return self.delivery.event(StreamStatus.ENDED, "end of file")


def _may_be_recorded(source: Source) -> bool:
    """Files, and HTTP (often a recording or a VOD playlist), are paced; cameras and devices pace themselves."""
    return source.kind is SourceKind.FILE or source.scheme in ("http", "https")


def _frame_step(container: av.container.InputContainer) -> float:
    rate = container.streams.video[0].average_rate or container.streams.video[0].guessed_rate
    return float(1 / rate) if rate else 0.0


__all__ = ["StreamIngest", "IngestError"]
