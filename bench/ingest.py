"""Ingest CPU cost: CPU seconds per minute of H.264 video sampled at 1 fps, with and without decode skipping.

    vidmem bench ingest                                   # 720p and 1080p, keyframe every 1, 2 and 10 s
    vidmem bench ingest --seconds 10 --resolutions 720p   # quicker
    python -m bench.ingest --help

For each resolution and keyframe interval, a 30 fps clip of lavfi ``testsrc2`` is encoded once
with libx264 (veryfast, no B-frames, fixed GOP, like a camera) and cached in ``--workdir``. Each
clip is then ingested by a real ``StreamIngest`` as fast as possible (``realtime=False``) in each
skip mode, and the process CPU time of the run is reported per minute of video, with the number of
such streams one core sustains in real time (60 / CPU seconds per minute). A short warm-up run is
excluded; the median over ``--repeats`` runs is reported. The last stdout line is one JSON document.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import typer
from av.video.frame import PictureType

from ingest.entities import IngestConfig, SkipMode
from ingest.runner import StreamIngest

RESOLUTIONS = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
SOURCE_FPS = 30


@dataclass(frozen=True)
class BenchConfig:
    seconds: float = 60.0  # length of each clip; figures are scaled to a minute
    resolutions: tuple[str, ...] = ("720p", "1080p")
    gops_s: tuple[float, ...] = (1.0, 2.0, 10.0)  # keyframe intervals
    sample_fps: float = 1.0
    modes: tuple[SkipMode, ...] = (SkipMode.NONE, SkipMode.AUTO, SkipMode.KEYFRAMES)
    frame_size: int = 384
    repeats: int = 1
    workdir: Path = Path("bench-results/ingest")


@dataclass
class Result:
    resolution: str
    gop_s: float
    mode: str
    cpu_s_per_min: float  # process CPU seconds per minute of video (all ingest threads)
    decode_cpu_s_per_min: float  # decode thread only: decode + resize of sampled frames
    streams_per_core: float  # real-time streams one core sustains
    frames_read: int
    frames_decoded: int
    frames_sampled: int
    wall_s: float
    runs_cpu_s: list[float] = field(default_factory=list)


def make_clip(path: Path, size: tuple[int, int], seconds: float, gop_frames: int) -> Path:
    """A 30 fps H.264 clip of testsrc2 with a keyframe exactly every ``gop_frames`` frames."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    source = av.open(f"testsrc2=size={width}x{height}:rate={SOURCE_FPS}", format="lavfi")
    tmp = path.with_suffix(".part.mp4")
    with source, av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=SOURCE_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "bf": "0", "g": str(gop_frames), "keyint_min": str(gop_frames),
                          "sc_threshold": "0", "crf": "23"}
        for i, frame in enumerate(source.decode(video=0)):
            if i >= int(seconds * SOURCE_FPS):
                break
            frame.pts = None
            frame.pict_type = PictureType.NONE  # lavfi marks every frame I: that would force keyframes
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


def measure(path: Path, mode: SkipMode, config: BenchConfig) -> tuple[float, dict]:  # type: ignore[type-arg]
    """One ingest of ``path`` as fast as possible; (process CPU seconds, final stats)."""
    ingest_config = IngestConfig(
        sample_fps=config.sample_fps, chunk_seconds=4.0, frame_size=config.frame_size, realtime=False, skip=mode,
    )
    ingest = StreamIngest(f"bench-{mode}", str(path), ingest_config, lambda chunk: None, lambda event: None)
    cpu0 = time.process_time()
    ingest.start()
    ingest.join()
    return time.process_time() - cpu0, ingest.stats()


def bench_one(path: Path, resolution: str, gop_s: float, mode: SkipMode, config: BenchConfig) -> Result:
    runs, stats, wall = [], {}, []
    for _ in range(config.repeats):
        t0 = time.perf_counter()
        cpu, stats = measure(path, mode, config)
        wall.append(time.perf_counter() - t0)
        runs.append(cpu)
    per_min = 60.0 / config.seconds
    cpu_min = statistics.median(runs) * per_min
    return Result(
        resolution=resolution, gop_s=gop_s, mode=str(mode), cpu_s_per_min=round(cpu_min, 3),
        decode_cpu_s_per_min=round(stats["decode_cpu_seconds"] * per_min, 3),
        streams_per_core=round(60.0 / cpu_min, 1) if cpu_min > 0 else float("inf"),
        frames_read=stats["frames_read"], frames_decoded=stats["frames_decoded"],
        frames_sampled=stats["frames_sampled"], wall_s=round(statistics.median(wall), 2),
        runs_cpu_s=[round(r, 3) for r in runs],
    )


def run(config: BenchConfig) -> list[Result]:
    """Encode (or reuse) every clip, warm up once, then measure every mode on every clip."""
    clips = {
        (res, gop): make_clip(
            config.workdir / f"testsrc2_{res}_{SOURCE_FPS}fps_gop{gop:g}s_{config.seconds:g}s.mp4",
            RESOLUTIONS[res], config.seconds, round(gop * SOURCE_FPS),
        )
        for res in config.resolutions for gop in config.gops_s
    }
    measure(next(iter(clips.values())), SkipMode.NONE, config)  # warm-up: imports, caches, allocator
    return [
        bench_one(path, res, gop, mode, config)
        for (res, gop), path in clips.items() for mode in config.modes
    ]


def report(results: list[Result], config: BenchConfig) -> None:
    """A table for people, then the JSON line for scripts."""
    header = f"{'video':>7} {'GOP s':>5} {'mode':>9} {'CPU s/min':>9} {'decode s/min':>12} {'streams/core':>12} " \
             f"{'decoded':>8} {'sampled':>7} {'vs none':>7}"
    print(header)
    print("-" * len(header))
    baseline = {(r.resolution, r.gop_s): r.cpu_s_per_min for r in results if r.mode == SkipMode.NONE}
    for r in results:
        base = baseline.get((r.resolution, r.gop_s))
        gain = f"{base / r.cpu_s_per_min:.1f}x" if base and r.cpu_s_per_min else "-"
        print(f"{r.resolution:>7} {r.gop_s:>5g} {r.mode:>9} {r.cpu_s_per_min:>9.2f} {r.decode_cpu_s_per_min:>12.2f} "
              f"{r.streams_per_core:>12.1f} {r.frames_decoded:>8} {r.frames_sampled:>7} {gain:>7}")
    config_json = {**asdict(config), "workdir": str(config.workdir), "modes": [str(m) for m in config.modes]}
    print(json.dumps({"bench": "ingest", "config": config_json, "results": [asdict(r) for r in results]}))


def cli(
    seconds: float = typer.Option(60.0, help="clip length in seconds (figures are per minute)"),
    resolutions: str = typer.Option("720p,1080p", help=f"comma-separated, of {', '.join(RESOLUTIONS)}"),
    gops: str = typer.Option("1,2,10", help="keyframe intervals in seconds, comma-separated"),
    sample_fps: float = typer.Option(1.0, help="frames sampled per second"),
    modes: str = typer.Option("none,auto,keyframes", help="skip modes: none, auto, keyframes"),
    repeats: int = typer.Option(1, help="runs per case (median reported)"),
    workdir: Path = typer.Option(Path("bench-results/ingest"), help="where the encoded clips are cached"),
) -> None:
    """CPU seconds per minute of 720p/1080p H.264 at 1 fps, with and without decode skipping."""
    unknown = [r for r in resolutions.split(",") if r not in RESOLUTIONS]
    if unknown:
        raise typer.BadParameter(f"unknown resolutions {unknown}; choose from {', '.join(RESOLUTIONS)}")
    config = BenchConfig(
        seconds=seconds, resolutions=tuple(resolutions.split(",")),
        gops_s=tuple(float(g) for g in gops.split(",")), sample_fps=sample_fps,
        modes=tuple(SkipMode(m) for m in modes.split(",")), repeats=repeats, workdir=workdir,
    )
    report(run(config), config)


if __name__ == "__main__":
    typer.run(cli)
