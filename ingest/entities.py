"""Value objects of the ingest package: frames, chunks, status events and the configuration.

Time is carried as an integer ``pts`` plus a ``Fraction`` time base, as in aiortc. Every frame an
ingest delivers is on the stream's own timeline (``CLOCK_RATE`` ticks since the ingest started):
monotonic across file loops and reconnects, with gaps where the source was away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

import numpy as np

from ingest.destinations import DestinationPolicy

CLOCK_RATE = 90_000  # ticks per second of the ingest timeline (the RTP video clock)
TIME_BASE = Fraction(1, CLOCK_RATE)


class StreamStatus(StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    FAILED = "failed"  # gave up: refused, unreadable, or out of retries
    STOPPED = "stopped"  # stop() was called
    ENDED = "ended"  # a finite source (file without loop) was read to its end


FINAL_STATUSES = frozenset({StreamStatus.FAILED, StreamStatus.STOPPED, StreamStatus.ENDED})


class DropPolicy(StrEnum):
    """What the bounded chunk queue between decoding and ``on_chunk`` does when it is full."""

    DROP_OLDEST = "drop_oldest"  # live default: the freshest video wins, the oldest chunk is counted and dropped
    DROP_NEWEST = "drop_newest"  # keep what is queued, drop the chunk that does not fit
    BLOCK = "block"  # wait (decoding pauses); the default for files read as fast as possible


class SkipMode(StrEnum):
    """How much decoding the sampler may avoid (see ``ingest.skipping``)."""

    AUTO = "auto"  # decode only the packets needed to hit the target rate; skip non-reference frames
    KEYFRAMES = "keyframes"  # decode keyframes only, even when that is below the target rate
    NONE = "none"  # decode every frame


@dataclass(frozen=True)
class Frame:
    """One sampled frame, resized once to ``IngestConfig.frame_size``."""

    image: np.ndarray  # uint8 [H, W, 3] RGB
    pts: int  # on the ingest timeline, in ``time_base`` units
    time_base: Fraction
    wall_time: float  # time.time() when the frame was decoded
    index: int  # n-th frame delivered by this ingest (0-based, contiguous)
    motion: np.ndarray | None = None  # float32 [rows, cols] motion magnitude (pixels/frame), if exported

    @property
    def seconds(self) -> float:
        """Media time in seconds since the ingest started."""
        return float(self.pts * self.time_base)


@dataclass(frozen=True)
class Chunk:
    """``chunk_seconds`` of sampled frames; ``seq`` is contiguous over the ingest's life (reconnects too)."""

    stream_id: str
    seq: int
    t_start: float  # seconds on the ingest timeline, inclusive
    t_end: float  # exclusive; chunks never overlap
    frames: tuple[Frame, ...]
    decode_ms: float = 0.0  # decode thread CPU time spent on this chunk's frames


@dataclass(frozen=True)
class Gap:
    """A stretch of the timeline with no video (the source was away), in seconds."""

    t_start: float
    t_end: float

    @property
    def seconds(self) -> float:
        return self.t_end - self.t_start


@dataclass(frozen=True)
class StatusEvent:
    stream_id: str
    status: StreamStatus
    reason: str | None = None  # human readable, credentials redacted
    wall_time: float = 0.0
    gap: Gap | None = None  # set on the LIVE event that follows a reconnect


@dataclass(frozen=True)
class IngestConfig:
    """Everything one ``StreamIngest`` needs; built by the caller from its settings."""

    sample_fps: float = 1.0  # frames delivered per second of media time
    chunk_seconds: float = 4.0
    frame_size: int | tuple[int, int] | None = 384  # square side or (height, width); None keeps the source size
    loop: bool = False  # files only: start again at the end
    realtime: bool = True  # files only: play at their own rate, like a camera (else as fast as possible)
    open_timeout_s: float = 10.0
    read_timeout_s: float | None = None  # None: stall_seconds / 2 (FFmpeg fires at about twice the value)
    stall_seconds: float = 10.0  # no video packet for this long = stalled, reconnect
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    backoff_factor: float = 2.0
    backoff_jitter: float = 0.2  # +- this fraction of each delay, so many cameras do not retry in step
    max_retries: int | None = None  # consecutive failed connects before FAILED; None = retry forever
    # A live source that has never delivered a frame fails after this many failed connects in a row (a wrong
    # URL fails clearly); once it has been live only max_retries applies. None = retry forever.
    first_connect_retries: int | None = 5
    allowed_schemes: tuple[str, ...] = ("rtsp", "rtsps", "http", "https", "file")
    allow_files: bool = True
    allow_devices: bool = False
    # Networks and file folder sources may point to, re-checked before every connect; None: the caller's own
    # check is all (library use). vidmem always passes the one built from its settings (workers.sources).
    destinations: DestinationPolicy | None = None
    device_format: str = "v4l2"  # PyAV input format for device://... URLs (lavfi in tests)
    rtsp_transport: str = "tcp"  # or "udp"
    skip: SkipMode = SkipMode.AUTO
    export_motion: bool = False
    motion_grid: tuple[int, int] = (16, 16)  # (rows, cols) of Frame.motion
    ice_hosts: tuple[str, ...] = ()  # WebRTC: local addresses offered as ICE host candidates; () = all but loopback
    ice_servers: tuple[str, ...] = ()  # WebRTC: STUN/TURN URLs (stun:host:port, turn:host?transport=tcp); () = none
    ice_username: str | None = None  # TURN
    ice_credential: str | None = field(default=None, repr=False)  # TURN password: kept out of reprs and logs
    queue_chunks: int = 8  # bound of the chunk queue between decoding and on_chunk
    drop_policy: DropPolicy | None = None  # None: BLOCK for files read as fast as possible, else DROP_OLDEST
    extra_options: dict[str, str] = field(default_factory=dict)  # more FFmpeg options, passed to av.open

    def __post_init__(self) -> None:
        if self.sample_fps <= 0 or self.chunk_seconds <= 0 or self.stall_seconds <= 0:
            raise ValueError("sample_fps, chunk_seconds and stall_seconds must be > 0")
        if self.first_connect_retries is not None and self.first_connect_retries < 1:
            raise ValueError(f"first_connect_retries must be >= 1 or None, got {self.first_connect_retries}")
        if self.queue_chunks < 1:
            raise ValueError(f"queue_chunks must be >= 1, got {self.queue_chunks}")
        if self.rtsp_transport not in ("tcp", "udp"):
            raise ValueError(f"rtsp_transport must be 'tcp' or 'udp', got {self.rtsp_transport!r}")

    @property
    def read_timeout(self) -> float:
        return self.read_timeout_s if self.read_timeout_s is not None else self.stall_seconds / 2

    @property
    def size_hw(self) -> tuple[int, int] | None:
        if self.frame_size is None:
            return None
        if isinstance(self.frame_size, int):
            return (self.frame_size, self.frame_size)
        return (int(self.frame_size[0]), int(self.frame_size[1]))
