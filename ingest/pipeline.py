"""Decoded frames from any source -> sampler -> one resize -> Frame -> chunker -> delivery.

Shared by the PyAV reader (``ingest.reader``) and the WebRTC receiver (``ingest.webrtc``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import av
import numpy as np

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
        self._held: Frame | None = None  # a sampled keyframe waiting for motion (export_motion only)

    def new_connection(self) -> None:
        """The next frame reports LIVE again (with the gap, if any)."""
        self.live_reported = False

    def charge(self, cpu_ms: float) -> None:
        self._cpu_ms += cpu_ms

    @property
    def wants_next_frame(self) -> bool:
        """A sampled keyframe waits for the next frame's motion vectors (keyframes carry none)."""
        return self._held is not None

    def offer(self, frame: av.VideoFrame, seconds: float) -> bool:
        """Take ``frame`` (at ``seconds`` on the ingest timeline) if the sampler wants it."""
        self.stats.add(frames_decoded=1)
        if self._held is not None:
            self._release(self._motion(frame))
        if not self.sampler.accept(seconds):
            return False
        cpu0 = time.thread_time()
        image = to_image(frame, self.config.size_hw)
        self.charge((time.thread_time() - cpu0) * 1e3)
        sample = Frame(image, round(seconds * CLOCK_RATE), TIME_BASE, time.time(), self.index)
        self.index += 1
        if self.config.export_motion and frame.key_frame:
            self._held = sample  # its motion comes from the next frame, which references it
        else:
            self._emit(replace(sample, motion=self._motion(frame)) if self.config.export_motion else sample)
        return True

    def _motion(self, frame: av.VideoFrame) -> np.ndarray:
        cpu0 = time.thread_time()
        grid = motion_grid(frame, *self.config.motion_grid)
        self.charge((time.thread_time() - cpu0) * 1e3)
        return grid

    def _release(self, motion: np.ndarray) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._emit(replace(held, motion=motion))

    def _emit(self, sample: Frame) -> None:
        self.stats.add(frames_sampled=1)
        self.stats.set(last_frame_wall=sample.wall_time, media_seconds=self.timeline.end)
        if self.timeline.live:  # decoding slower than the source shows up here first
            self.stats.set(behind_live_seconds=max(0.0, self.timeline.elapsed() - sample.seconds))
        if not self.live_reported:
            self._report_live()
        self._charge_chunk()
        chunk = self.chunker.add(sample)
        if chunk is not None:
            self.delivery.enqueue(chunk, self.stop)

    def flush(self) -> None:
        """Close the open chunk (disconnect, end, stop)."""
        self._release(np.zeros(self.config.motion_grid, np.float32))
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
