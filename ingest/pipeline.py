"""Decoded frames from any source -> sampler -> one resize -> Frame -> chunker -> delivery.

Shared by the PyAV reader (``ingest.reader``) and the WebRTC receiver (``ingest.webrtc``).
"""

from __future__ import annotations

import time
from typing import Any

import av

from ingest.chunker import Chunker
from ingest.delivery import Delivery
from ingest.entities import CLOCK_RATE, TIME_BASE, Frame, IngestConfig, StreamStatus
from ingest.motion import motion_grid
from ingest.sampler import Sampler, to_image
from ingest.stats import StatsBox
from ingest.timeline import Timeline


class FramePipeline:
    def __init__(
        self, stream_id: str, config: IngestConfig, timeline: Timeline, stats: StatsBox, delivery: Delivery,
        source_name: str, stop: Any = None,
    ) -> None:
        self.config, self.timeline, self.stats, self.delivery = config, timeline, stats, delivery
        self.source_name = source_name  # redacted
        self.stop = stop  # threading.Event: lets a blocking queue give up on stop
        self.sampler = Sampler(config.sample_fps)
        self.chunker = Chunker(stream_id, config.chunk_seconds, 1.0 / config.sample_fps)
        self.index = 0
        self.live_reported = False
        self._cpu_ms = 0.0  # decode CPU time not yet charged to a chunk

    def new_connection(self) -> None:
        """The next frame reports LIVE again (with the gap, if any)."""
        self.live_reported = False

    def charge(self, cpu_ms: float) -> None:
        self._cpu_ms += cpu_ms

    def offer(self, frame: av.VideoFrame, seconds: float) -> bool:
        """Take ``frame`` (at ``seconds`` on the ingest timeline) if the sampler wants it."""
        self.stats.add(frames_decoded=1)
        if not self.sampler.accept(seconds):
            return False
        cpu0 = time.thread_time()
        image = to_image(frame, self.config.size_hw)
        motion = motion_grid(frame, *self.config.motion_grid) if self.config.export_motion else None
        self.charge((time.thread_time() - cpu0) * 1e3)
        now = time.time()
        sample = Frame(image, round(seconds * CLOCK_RATE), TIME_BASE, now, self.index, motion)
        self.index += 1
        self.stats.add(frames_sampled=1)
        self.stats.set(last_frame_wall=now, media_seconds=self.timeline.end)
        if not self.live_reported:
            self._report_live()
        self._charge_chunk()
        chunk = self.chunker.add(sample)
        if chunk is not None:
            self.delivery.enqueue(chunk, self.stop)
        return True

    def flush(self) -> None:
        """Close the open chunk (disconnect, end, stop)."""
        self._charge_chunk()
        chunk = self.chunker.flush()
        if chunk is not None:
            self.delivery.enqueue(chunk, self.stop)

    def _report_live(self) -> None:
        self.live_reported = True
        gap = self.timeline.take_gap()
        if gap is not None:
            self.stats.record_gap(gap)
            self.delivery.report(StreamStatus.LIVE, f"back after a gap of {gap.seconds:.1f} s", gap)
        else:
            self.delivery.report(StreamStatus.LIVE, f"receiving video from {self.source_name}")

    def _charge_chunk(self) -> None:
        self.chunker.add_decode_time(self._cpu_ms)
        self.stats.add(decode_cpu_seconds=self._cpu_ms / 1e3)
        self._cpu_ms = 0.0
