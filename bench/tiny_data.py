"""Clips and questions for vidmem-tiny: training batches and fixed held-out sets.

Two regimes, both rendered on the fly from seeded streams (nothing is cached):
- ``short``: F (4..16) frames at 1 fps, starting at a random whole second t0 of a stream;
- ``long``: 16 frames one every 15 s over the first 4 minutes (for the "in which minute" type).
Seeds: training clips use seeds >= ``TRAIN_SEED_BASE``; held-out sets use seeds below
``HELDOUT_SEED_LIMIT``, so the two never meet.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from bench.questions import Question, make_questions
from bench.streamgen import COLOURS, SHAPES, ObjectTrack, Stream, StreamSpec

TRAIN_SEED_BASE = 1_000_000
VISION_SEED_BASE = 500_000_000  # streams for the vision pretraining (above every question-training seed)
HELDOUT_SEED_LIMIT = 100_000
LONG_STEP_S = 15.0
LONG_FRAMES = 16
MEMORY_FRAMES = 24  # a memory: this many frames picked from a stream of up to MEMORY_MAX_S, in time order
MEMORY_MAX_S = 600.0
MEMORY_DROPOUT = (0.0, 0.6)  # per memory clip, this range of its visual tokens is dropped at random (training)


@dataclass(frozen=True)
class Clip:
    seed: int
    frames: np.ndarray  # uint8 [F, H, W, 3]
    times: np.ndarray  # [F] seconds
    questions: list[Question]
    captions: list[tuple[str, str]]  # (request, answer text): dense auxiliary targets for training
    tracks: tuple[ObjectTrack, ...] = ()  # the stream's objects (ground truth for the per-cell targets)
    dropout: float = 0.0  # share of the clip's visual tokens dropped at random in training (memories only)


def _names(tracks: list[ObjectTrack]) -> str:
    return ", ".join(t.name for t in tracks) or "none"


def captions(tracks: list[ObjectTrack], times: np.ndarray) -> list[tuple[str, str]]:
    """Free-text descriptions of the clip, exact from the schedule (what is seen at the frame times)."""
    now, first = float(times[-1]), float(times[0])
    seen = [t for t in tracks if ((times >= t.t_in) & (times < t.t_out)).any()]
    here = sorted((t for t in seen if t.visible(now)), key=lambda t: t.position(now)[0])
    appeared = sorted((t for t in seen if first < t.t_in <= now), key=lambda t: t.t_in)
    moved = ", ".join(f"{t.name} {t.direction}" for t in sorted(seen, key=lambda t: t.t_in)) or "none"
    when = ", ".join(f"{t.name} {_first_seen(t, times):.1f}s" for t in appeared) or "none"
    return [
        ("Name the objects in view now.", _names(here)),
        ("Name the objects that appeared, in order.", _names(appeared)),
        ("How did each object move?", moved),
        ("When did each object appear?", when),
    ]


def _first_seen(track: ObjectTrack, times: np.ndarray) -> float:
    return float(times[(times >= track.t_in) & (times < track.t_out)][0])


POSITION_SCALE = 1000  # cell_targets stores the object centre in thousandths of the frame


def _cell_of(x: float, y: float, grid: tuple[int, int]) -> int:
    """Row-major index of the grid cell holding the normalised point (x, y)."""
    rows, cols = grid
    return min(int(y * rows), rows - 1) * cols + min(int(x * cols), cols - 1)


def cell_targets(tracks: Sequence[ObjectTrack], times: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per-frame, per-cell ground truth int64 [F, rows*cols, 4] for the auxiliary grounding loss of the
    vision side: colour, shape (0 = no object centre in the cell, else 1 + index in COLOURS / SHAPES)
    and the centre's x, y in thousandths of the frame (``POSITION_SCALE``; 0 where no centre).

    Labelling the centre's cell only (not every cell a shape overlaps) measured better: a cell holding a
    corner of a shape cannot tell a square from a circle, the centre's cell with its neighbours can.
    The exact centre is there because a cell is a third of the frame while an object moves 2 to 12 px
    per second at the model's 96 px: direction of motion needs the position inside the cell."""
    rows, cols = grid
    out = np.zeros((len(times), rows * cols, 4), dtype=np.int64)
    colours, shapes = list(COLOURS), list(SHAPES)
    for f, t in enumerate(times):
        for trk in tracks:
            if not trk.visible(float(t)):
                continue
            x, y = trk.position(float(t))
            cell = _cell_of(x, y, grid)
            out[f, cell] = (1 + colours.index(trk.colour), 1 + shapes.index(trk.shape),
                            round(x * POSITION_SCALE), round(y * POSITION_SCALE))
    return out


def short_spec(seed: int, seconds: float, size: int, rng: np.random.Generator) -> StreamSpec:
    return StreamSpec(
        seed=seed,
        seconds=seconds,
        fps=1.0,
        width=size,
        height=size,
        distractors=int(rng.integers(0, 3)),
        pan_speed=float(rng.choice([0.0, 0.0, 0.01, -0.01])),
    )


def long_spec(seed: int, size: int) -> StreamSpec:
    return memory_spec(seed, LONG_STEP_S * LONG_FRAMES, size)


def make_clip(spec: StreamSpec, times: np.ndarray, honest: bool = False, dropout: float = 0.0) -> Clip:
    stream = Stream(spec)
    questions = make_questions(stream.tracks, times, seed=spec.seed, honest=honest)
    tracks = tuple(stream.tracks)
    return Clip(spec.seed, stream.clip(times), times, questions, captions(stream.tracks, times), tracks, dropout)


def short_clip(seed: int, frames: int, t0: float, size: int, honest: bool = False) -> Clip:
    rng = np.random.default_rng([seed, 9])
    times = t0 + np.arange(frames, dtype=np.float64)
    return make_clip(short_spec(seed, t0 + frames, size, rng), times, honest)


def vision_batch(first_seed: int, count: int, size: int, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``count`` frames, one per training stream at a random time, with their per-cell targets:
    uint8 [count, size, size, 3] and int64 [count, rows*cols, 4] (see ``cell_targets``)."""
    frames, targets = [], []
    for seed in range(first_seed, first_seed + count):
        rng = np.random.default_rng([seed, 11])
        t = float(rng.integers(0, 120)) + float(rng.choice([0.0, 0.5]))
        stream = Stream(short_spec(seed, t + 1.0, size, rng))
        times = np.array([t])
        frames.append(stream.clip(times)[0])
        targets.append(cell_targets(stream.tracks, times, grid)[0])
    return np.stack(frames), np.stack(targets)


def long_clip(seed: int, size: int, honest: bool = False) -> Clip:
    return make_clip(long_spec(seed, size), np.arange(LONG_FRAMES, dtype=np.float64) * LONG_STEP_S, honest)


def memory_times(seed: int) -> tuple[np.ndarray, float]:
    """A memory's frame times (``MEMORY_FRAMES`` of the 15 s grid over 4 to 10 minutes, the last one
    always kept) and its token dropout rate: what the service feeds the model, minus any compression."""
    rng = np.random.default_rng([seed, 13])
    span = float(rng.integers(240, int(MEMORY_MAX_S) + 1, endpoint=False) // LONG_STEP_S * LONG_STEP_S)
    grid = np.arange(0.0, span, LONG_STEP_S)
    picked = np.sort(rng.choice(len(grid) - 1, size=min(MEMORY_FRAMES, len(grid)) - 1, replace=False))
    return np.append(grid[picked], grid[-1]), float(rng.uniform(*MEMORY_DROPOUT))


def memory_spec(seed: int, seconds: float, size: int) -> StreamSpec:
    return StreamSpec(
        seed=seed,
        seconds=seconds,
        fps=1.0 / LONG_STEP_S,
        width=size,
        height=size,
        gap_s=(15.0, 40.0),
        life_s=(20.0, 60.0),
        event_grid_s=LONG_STEP_S,
        distractors=1,
    )


def memory_clip(seed: int, size: int) -> Clip:
    """A memory spanning minutes (honest questions; ``dropout`` for the trainer)."""
    times, dropout = memory_times(seed)
    return make_clip(memory_spec(seed, float(times[-1]) + LONG_STEP_S, size), times, True, dropout)


@dataclass(frozen=True)
class BatchPlan:
    """What one training batch holds; rendering it is deterministic."""

    seeds: tuple[int, ...]
    regime: str  # "short" | "long" | "memory"
    frames: int
    t0: float
    size: int  # rendered size in pixels (the adapter resizes to the model's input size)
    honest: bool = False  # shuffled, balanced options (vidmem-tiny v2)

    def render(self) -> list[Clip]:
        if self.regime == "memory":
            return [memory_clip(s, self.size) for s in self.seeds]
        if self.regime == "long":
            return [long_clip(s, self.size, self.honest) for s in self.seeds]
        return [short_clip(s, self.frames, self.t0, self.size, self.honest) for s in self.seeds]


def batch_plans(
    clips_per_batch: int,
    sizes: tuple[int, ...],
    long_share: float = 0.15,
    seed: int = 0,
    max_frames: int = 16,
    curriculum_steps: int = 0,
    memory_share: float = 0.0,
    honest: bool = False,
    short_share: float = 0.0,
) -> Iterator[BatchPlan]:
    """Endless training plans; within a batch all clips share frame count and times (same prompt prefix).

    Curriculum: during the first ``curriculum_steps`` plans the clips have 1 to 4 frames and no
    long-span clips or memories are drawn (cheap steps that teach single-frame grounding first); over
    the next ``curriculum_steps`` plans the frame limit ramps linearly up to ``max_frames``. After the first
    phase, ``short_share`` of the plans keep drawing 1 to 4 frames, so the skill they taught stays in every
    stretch of the run instead of being crowded out by long clips."""
    rng = np.random.default_rng([seed, 5])
    next_seed = TRAIN_SEED_BASE + seed * 10_000_000
    for index in itertools.count():
        warm = curriculum_steps > 0 and index < curriculum_steps
        ramp = min(1.0, (index - curriculum_steps) / curriculum_steps) if curriculum_steps and not warm else 1.0
        top = min(max_frames, 4) if warm else int(round(min(4, max_frames) + ramp * (max_frames - min(4, max_frames))))
        seeds = tuple(range(next_seed, next_seed + clips_per_batch))
        next_seed += clips_per_batch
        size = int(rng.choice(sizes))
        draw = rng.random()
        if draw < long_share and not warm:
            yield BatchPlan(seeds, "long", LONG_FRAMES, 0.0, size, honest)
            continue
        if draw < long_share + memory_share and not warm and ramp >= 1.0:
            yield BatchPlan(seeds, "memory", MEMORY_FRAMES, 0.0, size, honest)
            continue
        if short_share and not warm and rng.random() < short_share:  # no draw at 0: old runs resume identically
            frames = int(rng.integers(1, min(4, max_frames) + 1))
        else:
            frames = int(rng.integers(1 if warm else min(4, top), top + 1))
        t0 = float(rng.integers(0, 900)) if rng.random() < 0.5 else 0.0
        yield BatchPlan(seeds, "short", frames, t0, size, honest)


def rendered(plans: Iterator[BatchPlan], ahead: int = 2) -> Iterator[list[Clip]]:
    """The plans' clips, rendered ``ahead`` batches in advance in one child process.

    Rendering a 16-frame batch costs about a fifth of a training step; the child runs it on the
    second core while the trainer (one torch thread) works on the first. Order is kept."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    from vidmem.processes import exit_with_parent

    # the renderer dies with the trainer, even a SIGKILLed one (it was left behind, rendering, before)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending = deque(pool.submit(plan.render) for plan in itertools.islice(plans, ahead))
        while pending:
            clips = pending.popleft().result()
            pending.extend(pool.submit(plan.render) for plan in itertools.islice(plans, 1))
            yield clips


def heldout_clips(count: int, size: int, first_seed: int = 0, honest: bool = False) -> list[Clip]:
    """A fixed held-out set: mostly 16-frame 1 fps clips, some shorter ones and some long-span ones
    (``honest``: shuffled, balanced options, see ``bench.questions.make_questions``)."""
    if first_seed + count > HELDOUT_SEED_LIMIT:
        raise ValueError(f"held-out seeds must stay below {HELDOUT_SEED_LIMIT}")
    clips = []
    for i, seed in enumerate(range(first_seed, first_seed + count)):
        if i % 8 == 7:
            clips.append(long_clip(seed, size, honest))
        else:
            frames = 16 if i % 4 else 8 + seed % 8
            clips.append(short_clip(seed, frames, float(seed % 5) * 37.0, size, honest))
    return clips


def clip_questions(seed: int, regime: str, frames: int = 16, t0: float = 0.0, honest: bool = True) -> list[Question]:
    """The questions ``short_clip`` / ``long_clip`` / ``memory_clip`` would ask, from the schedule alone
    (no rendering: thousands per second, for answer-balance checks)."""
    from bench.streamgen import build_schedule

    if regime == "memory":
        times, _ = memory_times(seed)
        spec = memory_spec(seed, float(times[-1]) + LONG_STEP_S, 32)
    elif regime == "long":
        times, spec = np.arange(LONG_FRAMES, dtype=np.float64) * LONG_STEP_S, long_spec(seed, 32)
    else:
        times = t0 + np.arange(frames, dtype=np.float64)
        spec = short_spec(seed, t0 + frames, 32, np.random.default_rng([seed, 9]))
    return make_questions(build_schedule(spec), times, seed=spec.seed, honest=honest)
