"""Seeded procedural video streams with an exact ground-truth event log.

A stream is a pure function of its ``StreamSpec``: the object schedule is drawn once from the
seed (cheap, even for hours), and ``render(t)`` draws the frame at media time ``t`` seconds, so
frames are produced lazily one at a time and any fps samples the same underlying scene.

Scene: a low-contrast texture of drifting sinusoids (changes slowly, optional camera pan), a few
distractor dots (grey, never asked about), and coloured shapes that appear at known times, move
in a straight line (left/right/up/down) and disappear again. Object positions are normalised
(0..1 of the frame), so the same stream renders identically at any size.

Usage::

    stream = Stream(StreamSpec(seed=3, seconds=600, fps=8, width=224, height=224))
    for t, frame in stream.frames():   # frame: uint8 [H, W, 3]
        ...
    stream.write_h264("clip.mp4"); stream.write_event_log("clip.json")
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 190, 50),
    "blue": (30, 70, 235),
    "yellow": (240, 220, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MARGIN = 0.04  # keeps shapes fully inside the frame (fraction of the frame)


@dataclass(frozen=True)
class StreamSpec:
    """Everything that defines a stream. Times in seconds, sizes in pixels, speeds in frames/s."""

    seed: int = 0
    seconds: float = 16.0
    fps: float = 1.0
    width: int = 112
    height: int = 112
    gap_s: tuple[float, float] = (2.0, 5.0)  # time between two appearances
    life_s: tuple[float, float] = (3.0, 8.0)  # how long an object stays in view
    max_in_view: int = 2
    object_size: float = 0.26  # side of a shape as a fraction of min(width, height)
    event_grid_s: float = 1.0  # appear/leave times are multiples of this
    pan_speed: float = 0.0  # background pan, frame widths per second (0: static camera)
    distractors: int = 0  # grey dots moving on Lissajous paths
    background_period_s: float = 120.0  # the texture drifts through one cycle in this time


@dataclass(frozen=True)
class ObjectTrack:
    """One object's life: in view for t_in <= t < t_out, centre moving linearly."""

    oid: int
    colour: str
    shape: str
    direction: str
    t_in: float
    t_out: float
    x0: float  # centre at t_in, normalised
    y0: float
    speed: float  # normalised distance per second

    def visible(self, t: float) -> bool:
        return self.t_in <= t < self.t_out

    def position(self, t: float) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        d = self.speed * (t - self.t_in)
        return self.x0 + dx * d, self.y0 + dy * d

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class _Schedule:
    rng: np.random.Generator
    spec: StreamSpec
    tracks: list[ObjectTrack] = field(default_factory=list)


def _snap(t: float, grid: float) -> float:
    return round(t / grid) * grid if grid > 0 else t


def _path_box(x0: float, y0: float, direction: str, travel: float, half: float) -> tuple[float, ...]:
    dx, dy = DIRECTIONS[direction]
    x1, y1 = x0 + dx * travel, y0 + dy * travel
    return min(x0, x1) - half, min(y0, y1) - half, max(x0, x1) + half, max(y0, y1) + half


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place(sched: _Schedule, direction: str, life: float, busy: list[tuple[float, ...]]) -> tuple[float, ...]:
    """Start point and speed so that the whole path stays inside the frame, away from busy paths."""
    half = sched.spec.object_size / 2
    lo, hi = MARGIN + half, 1 - MARGIN - half
    best: tuple[float, ...] = ()
    for _ in range(24):
        travel = float(sched.rng.uniform(0.25, 0.6)) * (hi - lo)
        dx, dy = DIRECTIONS[direction]
        xs = (lo + travel, hi) if dx < 0 else (lo, hi - travel) if dx > 0 else (lo, hi)
        ys = (lo + travel, hi) if dy < 0 else (lo, hi - travel) if dy > 0 else (lo, hi)
        x0, y0 = float(sched.rng.uniform(*xs)), float(sched.rng.uniform(*ys))
        box = _path_box(x0, y0, direction, travel, half)
        best = (x0, y0, travel / life)
        if not any(_overlaps(box, other) for other in busy):
            break
    return best


def _new_track(sched: _Schedule, t_in: float, active: list[ObjectTrack]) -> ObjectTrack:
    spec, rng = sched.spec, sched.rng
    taken = {trk.name for trk in active}
    names = [(c, s) for c in COLOURS for s in SHAPES if f"{c} {s}" not in taken]
    colour, shape = names[int(rng.integers(len(names)))]
    direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    life = max(spec.event_grid_s, _snap(float(rng.uniform(*spec.life_s)), spec.event_grid_s))
    half = spec.object_size / 2
    busy = [_path_box(a.x0, a.y0, a.direction, a.speed * (a.t_out - a.t_in), half) for a in active]
    x0, y0, speed = _place(sched, direction, life, busy)
    return ObjectTrack(len(sched.tracks), colour, shape, direction, t_in, t_in + life, x0, y0, speed)


def build_schedule(spec: StreamSpec) -> list[ObjectTrack]:
    """Draw every object of the stream from the seed (no frames are rendered)."""
    sched = _Schedule(np.random.default_rng([spec.seed, 1]), spec)
    t = _snap(float(sched.rng.uniform(0, spec.gap_s[0])), spec.event_grid_s)
    while t < spec.seconds:
        active = [a for a in sched.tracks if a.visible(t)]
        if len(active) >= spec.max_in_view:
            t = min(a.t_out for a in active)
            continue
        sched.tracks.append(_new_track(sched, t, active))
        gap = _snap(float(sched.rng.uniform(*spec.gap_s)), spec.event_grid_s)
        t += max(gap, spec.event_grid_s)
    return sched.tracks


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= r * 0.85
    if shape == "triangle":  # apex up; image y grows downwards
        return (dy <= r) & (np.abs(dx) <= (dy + r) * 0.5)
    if shape == "cross":
        arm = r * 0.36
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")


class Stream:
    """A procedural stream: schedule, lazy frames, H.264 file and event log."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.tracks = build_schedule(spec)
        rng = np.random.default_rng([spec.seed, 2])
        self._waves = rng.uniform(-1, 1, size=(6, 5))  # kx, ky, phase, drift, amplitude
        self._base = rng.uniform(95, 150, size=3)
        self._tint = rng.uniform(-1, 1, size=(6, 3))
        self._dots = rng.uniform(0, 1, size=(max(spec.distractors, 0), 4))
        size = max(spec.width, spec.height)
        ys, xs = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32)
        self._xs, self._ys = (xs + 0.5) / size, (ys + 0.5) / size  # units of the longer side

    def _background(self, t: float) -> np.ndarray:
        spec = self.spec
        pan = spec.pan_speed * t * spec.width / max(spec.width, spec.height)
        drift = 2 * math.pi * t / spec.background_period_s
        img = np.broadcast_to(self._base.astype(np.float32), (spec.height, spec.width, 3)).copy()
        for (kx, ky, phase, speed, amp), tint in zip(self._waves, self._tint, strict=True):
            arg = (6 + 8 * kx) * (self._xs + pan) + (6 + 8 * ky) * self._ys + 3 * phase + drift * (1 + speed)
            img += (np.sin(arg) * (6 + 5 * amp))[..., None] * (0.6 + 0.4 * tint[None, None, :])
        return img

    def _draw_dots(self, img: np.ndarray, t: float) -> None:
        size = max(self.spec.width, self.spec.height)
        for ax, ay, fx, fy in self._dots:
            cx = (0.5 + 0.42 * math.sin(2 * math.pi * (0.05 + 0.1 * fx) * t + 6 * ax)) * self.spec.width / size
            cy = (0.5 + 0.42 * math.sin(2 * math.pi * (0.05 + 0.1 * fy) * t + 6 * ay)) * self.spec.height / size
            mask = (self._xs - cx) ** 2 + (self._ys - cy) ** 2 <= (0.035) ** 2
            img[mask] = 200.0

    def visible(self, t: float) -> list[ObjectTrack]:
        return [trk for trk in self.tracks if trk.visible(t)]

    def render(self, t: float) -> np.ndarray:
        """The frame at media time t: uint8 [H, W, 3]."""
        spec = self.spec
        img = self._background(t)
        self._draw_dots(img, t)
        size = max(spec.width, spec.height)
        r = spec.object_size * min(spec.width, spec.height) / size / 2
        for trk in self.visible(t):
            x, y = trk.position(t)
            cx, cy = x * spec.width / size, y * spec.height / size
            img[_shape_mask(trk.shape, self._xs - cx, self._ys - cy, r)] = COLOURS[trk.colour]
        return np.clip(img, 0, 255).astype(np.uint8)

    def frame_times(self, fps: float | None = None, t0: float = 0.0, t1: float | None = None) -> np.ndarray:
        fps = fps or self.spec.fps
        t1 = self.spec.seconds if t1 is None else t1
        n = max(0, math.ceil((t1 - t0) * fps - 1e-9))
        return t0 + np.arange(n, dtype=np.float64) / fps

    def frames(
        self, fps: float | None = None, t0: float = 0.0, t1: float | None = None
    ) -> Iterator[tuple[float, np.ndarray]]:
        """Lazily yields (t seconds, frame) at fps (default: the spec's)."""
        for t in self.frame_times(fps, t0, t1):
            yield float(t), self.render(float(t))

    def clip(self, times: Sequence[float]) -> np.ndarray:
        """Frames at the given times: uint8 [F, H, W, 3]."""
        return np.stack([self.render(float(t)) for t in times])

    def events(self) -> list[dict]:
        """appear/leave events in time order (leave events after the stream end are omitted)."""
        out = []
        for trk in self.tracks:
            base = {"object": trk.oid, "colour": trk.colour, "shape": trk.shape, "direction": trk.direction}
            out.append({"t": trk.t_in, "kind": "appear", **base})
            if trk.t_out < self.spec.seconds:
                out.append({"t": trk.t_out, "kind": "leave", **base})
        return sorted(out, key=lambda e: (e["t"], e["kind"] != "leave", e["object"]))

    def event_log(self) -> dict:
        """The ground truth: spec, objects (with their motion) and events, JSON-serialisable."""
        return {
            "spec": asdict(self.spec),
            "objects": [asdict(trk) for trk in self.tracks],
            "events": self.events(),
        }

    def write_event_log(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.event_log(), indent=1))
        return path

    def write_h264(self, path: str | Path, crf: int = 18, gop: int | None = None) -> Path:
        """Encode every frame (at the spec's fps) to an H.264 MP4 with PyAV; returns the path."""
        import av

        path = Path(path)
        spec = self.spec
        rate = Fraction(spec.fps).limit_denominator(1001)
        with av.open(str(path), "w") as container:
            vstream = container.add_stream("libx264", rate=rate)
            vstream.width, vstream.height = spec.width - spec.width % 2, spec.height - spec.height % 2
            vstream.pix_fmt = "yuv420p"
            vstream.codec_context.options = {
                "crf": str(crf),
                "preset": "veryfast",
                "g": str(gop or max(1, round(spec.fps))),
            }
            for i, (_, img) in enumerate(self.frames()):
                frame = av.VideoFrame.from_ndarray(img[: vstream.height, : vstream.width], format="rgb24")
                frame.pts = i
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        log.info("wrote %s (%.0f s at %s fps)", path, spec.seconds, rate)
        return path


def track_from_dict(d: dict) -> ObjectTrack:
    return ObjectTrack(**d)


def demo_clip(
    folder: str | Path, *, seconds: float = 16.0, seed: int = 7, words: bool = False
) -> tuple[Path, list[tuple[str, str]]]:
    """An H.264 demo clip (224 px, 8 fps) with its event log, and questions with their answer letters
    (``words``: one honest question per type the clip supports, as prompts answered in words)."""
    from bench.questions import demo_questions

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stream = Stream(StreamSpec(seed=seed, seconds=seconds, fps=8.0, width=224, height=224))
    path = stream.write_h264(folder / f"synthetic-{seed}.mp4")
    stream.write_event_log(folder / f"synthetic-{seed}.json")
    if words:
        return path, [(q.prompt, q.answer_text) for q in demo_questions(stream, honest=True)]
    return path, [(q.text, q.answer) for q in demo_questions(stream)]
