"""Long streams through stage 1 + rolling memory + stage 2 (``vidmem bench stream``).

Each held-out stream (default 10 minutes at 1 fps) is encoded chunk by chunk (4 s) and pushed
through every configured pipeline (``compression.pipeline.Pipeline``: stage-1 spec, fixed memory
budget, stage-2 spec, LLM budget). At several moments ("now") questions about the stream so far
are asked; each is answered from

- each pipeline's memory (stage-2 selection under the LLM budget),
- full context: every token so far, only where it fits ``full_context_limit`` tokens,
- the last N frames only and uniform sampling of N frames over the stream so far, with N frames
  holding the LLM budget,
- controls on the same questions: zero visual tokens, and the last N frames of another held-out
  stream at the same moment.

Questions are honest (options shuffled, answers balanced) and scored by option likelihood
(``evalkit.score_options``).

Accuracy is reported per "how far back" bucket of the question's evidence, with memory bytes per
stream (a pipeline's serialised memory; fp16 tokens for the baselines).

    vidmem bench stream --minutes 10
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from bench.evalkit import Scored, accuracy, concat_blocks, interval, load, median, question_text
from bench.evalkit import score_options as score
from bench.questions import Question, make_questions
from bench.streamgen import Stream, StreamSpec
from compression.pipeline import Pipeline, PipelineState
from compression.tokens import TokenBlock, TokenSet

log = logging.getLogger(__name__)

BUCKETS = ((0.0, 15.0, "0-15s"), (15.0, 60.0, "15-60s"), (60.0, 180.0, "1-3min"), (180.0, 1e9, ">3min"))
FP16_BYTES = 2


@dataclass
class StreamConfig:
    model: str = "vidmem-tiny"
    streams: int = 4  # with a question moment every 30 s: over 100 questions in every how-far-back bucket
    minutes: float = 10.0
    first_seed: int = 70_000  # held-out: never used in training
    frame_size: int = 128
    chunk_seconds: int = 4  # frames per chunk at 1 fps
    pipelines: tuple[str, ...] = ("dtd|uniform", "uniform:ratio=0.5|fastv")  # "stage1|stage2"
    memory_budget: int = 1024
    llm_budget: int = 144
    full_context_limit: int = 2048
    ask_every_s: float = 30.0
    question_seeds: int = 2
    threads: int = 1
    dtype: str = "auto"
    out_dir: str = "bench-results/stream"


def stream_spec(seed: int, cfg: StreamConfig) -> StreamSpec:
    return StreamSpec(
        seed=seed,
        seconds=cfg.minutes * 60,
        fps=1.0,
        width=cfg.frame_size,
        height=cfg.frame_size,
        gap_s=(6.0, 25.0),
        life_s=(4.0, 12.0),
        distractors=1,
        pan_speed=0.005,
    )


def bucket(evidence_s: float) -> str:
    return next(name for lo, hi, name in BUCKETS if lo <= evidence_s < hi)


def questions_at(stream: Stream, now: float, cfg: StreamConfig) -> list[Question]:
    times = np.arange(0.0, now + 1e-9, 1.0)
    seen: dict[str, Question] = {}
    for k in range(cfg.question_seeds):
        for q in make_questions(stream.tracks, times, seed=stream.spec.seed * 100 + int(now) + k * 7919, honest=True):
            seen.setdefault(q.stem, q)
    return list(seen.values())


def last_frames(tokens: TokenSet, n: int) -> TokenSet:
    frames = tokens.frames()
    keep = frames[-n:]
    return tokens.gather(torch.isin(tokens.frame, keep).nonzero()[:, 0])


def uniform_frames(tokens: TokenSet, n: int) -> TokenSet:
    frames = tokens.frames()
    idx = torch.linspace(0, len(frames) - 1, min(n, len(frames))).round().long()
    return tokens.gather(torch.isin(tokens.frame, frames[idx]).nonzero()[:, 0])


def build_pipelines(cfg: StreamConfig) -> dict[str, Pipeline]:
    out = {}
    for spec in cfg.pipelines:
        stage1, stage2 = spec.split("|")
        out[spec] = Pipeline(stage1, cfg.memory_budget, stage2, cfg.llm_budget)
    return out


@dataclass
class Tally:
    scored: dict[str, list[Scored]]
    compress_ms: dict[str, list[float]]
    memory_bytes: dict[str, list[int]]


OTHER_SEED_OFFSET = 5_000  # the control stream of stream s is s + this (held-out, never a benchmark stream itself)


def ask(model, cfg: StreamConfig, qs: list[Question], states: dict, pipes: dict, seen: TokenSet, tally: Tally,  # type: ignore[no-untyped-def]
        other: TokenSet) -> None:
    per_frame = seen.grid[0] * seen.grid[1]
    n_frames = max(1, cfg.llm_budget // per_frame)
    empty = TokenSet.empty(seen.dim, seen.grid)
    for i, q in enumerate(qs):
        tally.scored.setdefault("zero visual tokens", []).append(score(model, q, empty))
        tally.scored.setdefault(f"another stream, last {n_frames} frames", []).append(
            score(model, q, last_frames(other, n_frames)))
        for name, pipe in pipes.items():
            start = time.perf_counter()
            kept = pipe.select(states[name], question_text(model, q), model, seed=i)
            tally.compress_ms.setdefault(name, []).append((time.perf_counter() - start) * 1e3)
            tally.scored.setdefault(name, []).append(score(model, q, kept))
        if len(seen) <= cfg.full_context_limit:
            tally.scored.setdefault("full context", []).append(score(model, q, seen))
        tally.scored.setdefault(f"last {n_frames} frames", []).append(score(model, q, last_frames(seen, n_frames)))
        tally.scored.setdefault(f"uniform {n_frames} frames", []).append(
            score(model, q, uniform_frames(seen, n_frames))
        )


def run_stream(model, seed: int, cfg: StreamConfig, tally: Tally) -> None:  # type: ignore[no-untyped-def]
    stream = Stream(stream_spec(seed, cfg))
    control = Stream(stream_spec(seed + OTHER_SEED_OFFSET, cfg))
    other_blocks: list[TokenBlock] = []
    pipes = build_pipelines(cfg)
    states: dict[str, PipelineState] = {name: p.init() for name, p in pipes.items()}
    blocks: list[TokenBlock] = []
    step = cfg.chunk_seconds
    next_ask = cfg.ask_every_s
    for t0 in range(0, int(stream.spec.seconds), step):
        times = np.arange(t0, t0 + step, dtype=np.float64)
        block = model.encode(stream.clip(times), times.tolist(), frame_offset=t0)
        blocks.append(block)
        other_blocks.append(model.encode(control.clip(times), times.tolist(), frame_offset=t0))
        for name, pipe in pipes.items():
            states[name] = pipe.ingest(states[name], block)
        now = float(times[-1])
        if now + 1 >= next_ask or t0 + step >= stream.spec.seconds:
            next_ask += cfg.ask_every_s
            qs = questions_at(stream, now, cfg)
            ask(model, cfg, qs, states, pipes, concat_blocks(blocks), tally, concat_blocks(other_blocks))
            log.info("stream %d at %.0f s: %d questions", seed, now, len(qs))
    for name in pipes:
        tally.memory_bytes.setdefault(name, []).append(states[name].memory.nbytes)
    seen = concat_blocks(blocks)
    per_token = seen.features.shape[1] * FP16_BYTES
    n_frames = max(1, cfg.llm_budget // (seen.grid[0] * seen.grid[1]))
    tally.memory_bytes.setdefault("full context", []).append(len(seen) * per_token)
    tally.memory_bytes.setdefault(f"last {n_frames} frames", []).append(
        n_frames * seen.grid[0] * seen.grid[1] * per_token
    )
    tally.memory_bytes.setdefault(f"uniform {n_frames} frames", []).append(len(seen) * per_token)


def summarise(tally: Tally) -> list[dict]:
    rows = []
    for name, scored in tally.scored.items():
        rows.append(
            {
                "approach": name,
                "accuracy": accuracy(scored),
                "interval": interval([s.correct for s in scored]),
                "questions": len(scored),
                "by_bucket": {b: accuracy([s for s in scored if bucket(s.evidence_s) == b]) for _, _, b in BUCKETS},
                "bucket_questions": {b: sum(bucket(s.evidence_s) == b for s in scored) for _, _, b in BUCKETS},
                "visual_tokens": float(np.mean([s.visual_tokens for s in scored])),
                "prefill_ms": median([s.prefill_ms for s in scored]),
                "select_ms": median(tally.compress_ms.get(name, [])),
                "memory_bytes": float(np.mean(tally.memory_bytes.get(name, [float("nan")]))),
            }
        )
    return rows


def print_table(rows: list[dict], cfg: StreamConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{cfg.streams} streams x {cfg.minutes:.0f} min at 1 fps; memory budget {cfg.memory_budget} "
        f"tokens, LLM budget {cfg.llm_budget}; accuracy % by how far back the evidence lies"
    )
    buckets = [b for _, _, b in BUCKETS]
    for col in ("approach", "all", *buckets, "visual tokens", "memory bytes/stream", "select ms", "prefill ms"):
        table.add_column(col, justify="left" if col == "approach" else "right")
    for r in rows:
        cells = [f"{r['by_bucket'][b] * 100:.0f} ({r['bucket_questions'][b]})" for b in buckets]
        table.add_row(
            r["approach"],
            f"{r['accuracy'] * 100:.1f}",
            *cells,
            f"{r['visual_tokens']:.0f}",
            f"{r['memory_bytes']:.0f}",
            f"{r['select_ms']:.2f}",
            f"{r['prefill_ms']:.1f}",
        )
    Console(width=180).print(table)


def run(cfg: StreamConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    model = load(cfg.model, cfg.dtype)
    tally = Tally({}, {}, {})
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.streams):
        run_stream(model, seed, cfg, tally)
    rows = summarise(tally)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": dataclasses.asdict(cfg), "results": rows, "wall_s": time.perf_counter() - started}
    (out / "stream.json").write_text(json.dumps(report, indent=1))
    plot(rows, out / "stream.png")
    print_table(rows, cfg)
    return report


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = [b for _, _, b in BUCKETS]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = np.arange(len(buckets)) + i * width
        ax.bar(xs, [r["by_bucket"][b] * 100 for b in buckets], width, label=r["approach"])
    ax.set_xticks(np.arange(len(buckets)) + 0.4 - width / 2, buckets)
    ax.set_xlabel("how far back the evidence lies")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cli(
    model: Annotated[str, typer.Option(help="'vidmem-tiny' (shipped) or a model folder")] = "vidmem-tiny",
    streams: Annotated[int, typer.Option(help="held-out streams")] = StreamConfig.streams,
    seed: Annotated[int, typer.Option(help="first held-out stream seed (below 100000)")] = StreamConfig.first_seed,
    minutes: Annotated[float, typer.Option(help="length of each stream")] = 10.0,
    pipelines: Annotated[str, typer.Option(help="comma-separated 'stage1|stage2' specs")] = ",".join(
        StreamConfig.pipelines
    ),
    memory_budget: Annotated[int, typer.Option(help="memory tokens per stream")] = 1024,
    llm_budget: Annotated[int, typer.Option(help="visual tokens per question")] = 144,
    out_dir: Annotated[str, typer.Option(help="JSON and PNG go here")] = "bench-results/stream",
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
) -> None:
    """Long streams through stage 1 + memory + stage 2 vs full context, last-N and uniform sampling."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    cfg = StreamConfig(
        model=model,
        streams=streams,
        first_seed=seed,
        minutes=minutes,
        pipelines=tuple(pipelines.split(",")),
        memory_budget=memory_budget,
        llm_budget=llm_budget,
        out_dir=out_dir,
        threads=threads,
    )
    report = run(cfg)
    print(
        json.dumps(
            {
                "approaches": {r["approach"]: round(r["accuracy"], 4) for r in report["results"]},
                "bucket_questions": report["results"][0]["bucket_questions"] if report["results"] else {},
                "memory_bytes": {r["approach"]: r["memory_bytes"] for r in report["results"]},
                "wall_s": round(report["wall_s"], 1),
                "json": str(Path(out_dir) / "stream.json"),
            }
        )
    )


if __name__ == "__main__":
    typer.run(cli)
