"""Read one opened source until it ends, fails, stalls or is stopped.

Demuxing and decoding are separate steps: only the demuxer decides that a connection is gone
(plain end of stream or a timeout), while a packet the decoder rejects (typically the one cut off
by a dying server) is counted and skipped. The decode-skipping planner sees every packet before
the decoder does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

import av
import av.container

from ingest.entities import IngestConfig
from ingest.motion import enable_motion_vectors
from ingest.pipeline import FramePipeline
from ingest.skipping import DecodePlanner
from ingest.sources import describe_error
from ingest.stats import StatsBox
from ingest.timeline import Timeline

INTRA_CODECS = ("rawvideo", "wrapped_avframe", "mjpeg")  # packets may lack the keyframe flag
MAX_PACE_LAG_S = 1.0  # a file played in real time that falls further behind restarts its pacing clock
GOP_PROBE_PACKETS = 600  # a file's first keyframes are looked for among twice this many packets


class Outcome(StrEnum):
    EOF = "eof"  # the source ended (a dead RTSP server looks like this too)
    ERROR = "error"
    STALL = "stall"  # no video for stall_seconds (read timeout or undecodable packets)
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReadResult:
    outcome: Outcome
    reason: str
    frames: int  # frames decoded on this connection


def keyframe_times(container: av.container.InputContainer, limit: int = 2 * GOP_PROBE_PACKETS) -> list[float]:
    """Media seconds of the first few keyframes, from packets only (nothing is decoded)."""
    stream = container.streams.video[0]
    times: list[float] = []
    for count, packet in enumerate(container.demux(stream)):
        pts = packet.pts if packet.pts is not None else packet.dts
        if packet.is_keyframe and pts is not None and packet.time_base is not None:
            times.append(float(pts * packet.time_base))
        if len(times) >= 3 or count >= limit:
            break
    return times


class ConnectionReader:
    """One connection's demux -> plan -> decode -> sample loop."""

    def __init__(
        self, config: IngestConfig, pipeline: FramePipeline, planner: DecodePlanner, stop: threading.Event, pace: bool,
    ) -> None:
        self.config, self.pipeline, self.planner, self.stop, self.pace = config, pipeline, planner, stop, pace
        self.timeline: Timeline = pipeline.timeline
        self.stats: StatsBox = pipeline.stats
        self._frames = 0
        self._time_base: Fraction | None = None
        self._intra_only = False  # every frame decodes on its own (raw video, MJPEG): each is a "keyframe"
        self._pace_origin: tuple[float, float] | None = None  # (wall, media seconds)
        self._progress = time.monotonic()

    def read(self, container: av.container.InputContainer) -> ReadResult:
        stream = container.streams.video[0]
        self._time_base = stream.time_base
        self._prepare(stream.codec_context)
        codec = stream.codec_context.codec
        self._intra_only = bool(codec.intra_only) or codec.name in INTRA_CODECS
        self._frames, self._progress, self._pace_origin = 0, time.monotonic(), None
        self.planner.reset()
        try:
            for packet in container.demux(stream):
                if self.stop.is_set():
                    return ReadResult(Outcome.STOPPED, "stopped", self._frames)
                self._on_packet(stream, packet)
                if time.monotonic() - self._progress > self.config.stall_seconds:
                    return ReadResult(Outcome.STALL, self._stall_reason("no decodable video"), self._frames)
        except (av.error.TimeoutError, av.error.ExitError):
            return ReadResult(Outcome.STALL, self._stall_reason("read timed out"), self._frames)
        except (av.FFmpegError, OSError) as exc:
            return ReadResult(Outcome.ERROR, describe_error(exc), self._frames)
        return ReadResult(Outcome.EOF, "end of stream", self._frames)

    def _prepare(self, codec_context: av.codec.context.CodecContext) -> None:
        codec_context.thread_count = 1  # one thread per stream: no frame delay, best CPU per frame
        codec_context.skip_frame = self.planner.skip_frame
        if self.config.export_motion:
            enable_motion_vectors(codec_context)

    def _stall_reason(self, what: str) -> str:
        return f"stalled: {what} for {time.monotonic() - self._progress:.1f} s"

    def _on_packet(self, stream: av.video.stream.VideoStream, packet: av.Packet) -> None:
        if packet.size == 0:  # the demuxer's final empty packet: flush the decoder
            self._decode(stream, None)
            return
        pts = packet.pts if packet.pts is not None else packet.dts
        seconds = self.timeline.seconds(pts, packet.time_base)
        self.stats.add(frames_read=1)
        if self.pace:
            self._wait_for(seconds)
        is_key = packet.is_keyframe or self._intra_only
        wanted = self.pipeline.wants_next_frame and self.planner.can_decode(is_key)  # motion for a keyframe
        if self.planner.should_decode(seconds, is_key, self.pipeline.sampler.next_due) or wanted:
            self._decode(stream, packet)
        else:
            self._progress = time.monotonic()
            self.stats.add(frames_skipped=1)

    def _decode(self, stream: av.video.stream.VideoStream, packet: av.Packet | None) -> None:
        cpu0 = time.thread_time()
        try:
            frames = stream.codec_context.decode(packet)
        except av.FFmpegError:
            frames = []
            self.stats.add(decode_errors=1)
        self.pipeline.charge((time.thread_time() - cpu0) * 1e3)
        for frame in frames:
            self._on_frame(frame)

    def _on_frame(self, frame: av.VideoFrame) -> None:
        self._frames += 1
        self._progress = time.monotonic()
        time_base = frame.time_base or self._time_base  # frames drained at the end come without one
        self.pipeline.offer(frame, self.timeline.frame_seconds(frame.pts, time_base))

    def _wait_for(self, seconds: float) -> None:
        """Play a file at its own rate: sleep until this packet's media time is due."""
        now = time.monotonic()
        if self._pace_origin is None:
            self._pace_origin = (now, seconds)
        wall0, media0 = self._pace_origin
        delay = wall0 + (seconds - media0) - now
        if delay > 0:
            self.stop.wait(delay)
        elif delay < -MAX_PACE_LAG_S:
            self._pace_origin = (now, seconds)
