"""Worker scale-out: chunks/s and questions/s with 1, 2 and 4 worker processes, and cross-stream encode batching.

    vidmem bench workers            # 4 streams x 8 chunks, 4 questions per stream, 1/2/4 workers, batch 1/4/8
    vidmem bench workers --quick    # 4 streams x 4 chunks, 2 questions per stream
    python -m bench.workers --help

Scaling: for each worker count a fresh PostgreSQL database and a flushed Redis database (the
broker, blob and memory store) are used; the workers are real ``vidmem worker`` processes
(``vidmem.processes.WorkerProcess``), each with ``VIDMEM_TORCH_THREADS = cores // workers`` (at least 1).
Once they are ready, every stream's chunks are submitted at once through ``workers.dispatch.submit_chunk``
(a backlog, interleaved across streams, no backpressure drop), and the time until none is pending gives
chunks/s; then every stream's questions are enqueued at once and the time until all are answered gives
questions/s. Ratios are against one worker in the same run. Queue latency: a chunk's ``created_at`` to
``applied_at``, a question's ``created_at`` to ``started_at`` (p50, p99). ``retries`` counts the Celery
retries in the workers' logs (a task that waited for ordering).

Batching: the encode throughput (chunks/s) of :func:`vlm.batch.encode_many` over the chunks of ``b``
streams in one forward pass, for b in 1, 4, 8, against b = 1, in this process (CPU, and a CUDA GPU when
one is available): the whole encode (per-frame exact PIL-equal preprocessing included) and the vision
tower's forward pass alone. ``--workers ""`` measures batching only. The last stdout line is one JSON document.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import typer

log = logging.getLogger(__name__)

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"
RETRY_LINE = re.compile(rb"retry: Retry in", re.IGNORECASE)


@dataclass(frozen=True)
class BenchConfig:
    streams: int = 4
    chunks_per_stream: int = 8
    questions_per_stream: int = 4
    workers: tuple[int, ...] = (1, 2, 4)
    batches: tuple[int, ...] = (1, 4, 8)
    batch_clips: int = 16  # chunks encoded per batch size (a multiple of every batch size is fairest)
    repeats: int = 3  # batching: best of this many passes
    frames: int = 4  # frames per chunk (chunk_seconds x sample_fps of the default settings)
    frame_size: int = 384
    model: str = "vidmem-tiny"
    pg_admin_url: str = PG_ADMIN_URL
    redis_url: str = REDIS_URL
    timeout_s: float = 600.0  # per phase


@dataclass
class ScaleRow:
    workers: int
    torch_threads: int
    chunks: int
    chunks_per_s: float
    questions: int
    questions_per_s: float
    chunk_latency_p50_s: float
    chunk_latency_p99_s: float
    question_latency_p50_s: float
    question_latency_p99_s: float
    retries: int
    applied: int
    answered: int
    chunks_ratio: float = float("nan")
    questions_ratio: float = float("nan")


@dataclass
class BatchRow:
    device: str
    batch: int
    chunks_per_s: float  # whole encode: preprocessing (exact PIL resize, per frame) + vision tower
    forward_chunks_per_s: float  # the vision tower's forward pass alone
    gain: float = float("nan")
    forward_gain: float = float("nan")


@dataclass
class Report:
    config: dict
    machine: dict
    scaling: list[ScaleRow] = field(default_factory=list)
    batching: list[BatchRow] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- scaling
def _create_database(admin_url: str) -> str:
    from sqlalchemy import create_engine, text

    from store import db

    name = f"vidmem_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    db.upgrade(url)
    return url


def _drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def _frames(cfg: BenchConfig, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (cfg.frames, cfg.frame_size, cfg.frame_size, 3),
                                                dtype=np.uint8)


def _wait(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done within {timeout_s:.0f} s")
        time.sleep(0.05)


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def scale_run(cfg: BenchConfig, n_workers: int, folder: Path) -> ScaleRow:
    """One worker count on a fresh database and Redis: the chunk backlog, then the question burst."""
    import redis

    from store import repo
    from store.db import session_scope
    from store.models import ChunkStatus, QuestionStatus
    from vidmem.processes import WorkerProcess
    from vidmem.settings import Settings
    from workers import dispatch
    from workers.app import create_celery
    from workers.runtime import Runtime

    threads = max(1, (os.cpu_count() or 1) // n_workers)
    url = _create_database(cfg.pg_admin_url)
    redis.Redis.from_url(cfg.redis_url).flushdb()
    settings = Settings(
        _env_file=None, data_dir=folder / f"run{n_workers}", database_url=url, broker_url=cfg.redis_url,
        model=cfg.model, frame_size=cfg.frame_size, torch_threads=threads,
        max_pending_chunks=cfg.streams * cfg.chunks_per_stream + 1,
    )
    settings.ensure_dirs()
    rt = Runtime(settings, role="ingest")
    create_celery(settings)
    workers = [WorkerProcess(settings.model_copy(update={"data_dir": settings.data_dir / f"w{i}"}))
               for i in range(n_workers)]
    try:
        for worker in workers:
            worker.start()
        with session_scope(rt.sessions) as session:
            streams = [repo.create_stream(session, name=f"bench{i}", source_url="rtsp://192.0.2.1/bench").id
                       for i in range(cfg.streams)]
        frames = [_frames(cfg, seed) for seed in range(4)]
        start = time.perf_counter()
        for seq in range(cfg.chunks_per_stream):  # interleaved, as live streams deliver them
            for k, stream_id in enumerate(streams):
                times = np.arange(cfg.frames, dtype=np.float64) + seq * cfg.frames
                dispatch.submit_chunk(rt, stream_id=stream_id, seq=seq, t_start=float(times[0]),
                                      t_end=float(times[-1]) + 1, images=frames[(seq + k) % 4], timestamps=times)

        def chunks_done() -> bool:
            with session_scope(rt.sessions) as session:
                return all(repo.chunk_counts(session, stream_id=s)["pending"] == 0 for s in streams)

        _wait(chunks_done, cfg.timeout_s, "chunks")
        chunk_s = time.perf_counter() - start
        with session_scope(rt.sessions) as session:
            question_ids = [repo.create_question(session, stream_id=s, text=f"what happened {i}?").id
                            for i in range(cfg.questions_per_stream) for s in streams]
        start = time.perf_counter()
        for question_id in question_ids:
            dispatch.enqueue_question(question_id)

        def questions_done() -> bool:
            with session_scope(rt.sessions) as session:
                return all(repo.get_question(session, q).status in (QuestionStatus.done, QuestionStatus.failed)
                           for q in question_ids)

        _wait(questions_done, cfg.timeout_s, "questions")
        question_s = time.perf_counter() - start
        with session_scope(rt.sessions) as session:
            chunks = [c for s in streams for c in repo.chunks_before(session, stream_id=s, seq=10**9, after=-1)]
            questions = [repo.get_question(session, q) for q in question_ids]
            chunk_wait = [(c.applied_at - c.created_at).total_seconds() for c in chunks if c.applied_at]
            question_wait = [(q.started_at - q.created_at).total_seconds() for q in questions if q.started_at]
            applied = sum(c.status == ChunkStatus.applied for c in chunks)
            answered = sum(q.status == QuestionStatus.done for q in questions)
    finally:
        for worker in workers:
            worker.stop()
        rt.engine.dispose()
        _drop_database(cfg.pg_admin_url, url)
    retries = sum(len(RETRY_LINE.findall(w.log_path.read_bytes())) for w in workers if w.log_path.exists())
    (c50, c99), (q50, q99) = _percentiles(chunk_wait), _percentiles(question_wait)
    n_chunks, n_questions = cfg.streams * cfg.chunks_per_stream, len(question_ids)
    return ScaleRow(n_workers, threads, n_chunks, n_chunks / chunk_s, n_questions, n_questions / question_s,
                    c50, c99, q50, q99, retries, applied, answered)


# ---------------------------------------------------------------------------------------------- batching
def _best_time(fn, repeats: int, device: str) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def batch_rows(cfg: BenchConfig, device: str) -> list[BatchRow]:
    """Chunks/s of encode_many over groups of b streams' chunks (and of its forward pass alone), best of ``repeats``."""
    from vlm.batch import Clip, encode_many, frame_features
    from vlm.loader import load_model
    from workers.runtime import resolve_model_name

    if not cfg.batches:  # --batches "": scaling only
        return []
    model = load_model(resolve_model_name(cfg.model), device=device, cache_dir=tempfile.mkdtemp(prefix="vidmem-"))
    clips = [Clip(_frames(cfg, seed), [float(t) for t in range(cfg.frames)], seed * cfg.frames)
             for seed in range(cfg.batch_clips)]
    encode_many(model, clips[:2])  # warm-up
    features = frame_features(model)
    pixels = [model.pixel_values(c.frames) for c in clips]
    rows = []
    for b in cfg.batches:
        groups = [range(i, min(i + b, len(clips))) for i in range(0, len(clips), b)]
        whole = _best_time(lambda gs=groups: [encode_many(model, [clips[j] for j in g]) for g in gs],
                           cfg.repeats, device)
        with torch.no_grad():
            forward = float("nan") if features is None else _best_time(
                lambda gs=groups: [features(torch.cat([pixels[j] for j in g])) for g in gs], cfg.repeats, device)
        rows.append(BatchRow(device, b, len(clips) / whole, len(clips) / forward))
    base = next((r for r in rows if r.batch == 1), rows[0])
    for row in rows:
        row.gain = row.chunks_per_s / base.chunks_per_s
        row.forward_gain = row.forward_chunks_per_s / base.forward_chunks_per_s
    return rows


# ---------------------------------------------------------------------------------------------- report
def run(cfg: BenchConfig) -> Report:
    report = Report(config=asdict(cfg), machine={
        "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
        "load_average": os.getloadavg(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    })
    with tempfile.TemporaryDirectory(prefix="vidmem-bench-workers-") as folder:
        for n in cfg.workers:
            log.info("scaling: %d worker(s)", n)
            report.scaling.append(scale_run(cfg, n, Path(folder)))
    base = next((r for r in report.scaling if r.workers == 1), None)
    for row in report.scaling:
        if base is not None:
            row.chunks_ratio = row.chunks_per_s / base.chunks_per_s
            row.questions_ratio = row.questions_per_s / base.questions_per_s
    report.batching = batch_rows(cfg, "cpu")
    if torch.cuda.is_available():
        report.batching += batch_rows(cfg, "cuda")
    return report


def show(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, width=160)
    table = Table(title="worker processes (ratios against 1 worker)")
    for col in ("workers", "threads", "chunks/s", "ratio", "questions/s", "ratio", "chunk wait p50/p99 s",
                "question wait p50/p99 s", "retries", "applied", "answered"):
        table.add_column(col)
    for r in report.scaling:
        table.add_row(str(r.workers), str(r.torch_threads), f"{r.chunks_per_s:.2f}", f"{r.chunks_ratio:.2f}x",
                      f"{r.questions_per_s:.2f}", f"{r.questions_ratio:.2f}x",
                      f"{r.chunk_latency_p50_s:.2f}/{r.chunk_latency_p99_s:.2f}",
                      f"{r.question_latency_p50_s:.2f}/{r.question_latency_p99_s:.2f}", str(r.retries),
                      f"{r.applied}/{r.chunks}", f"{r.answered}/{r.questions}")
    console.print(table)
    batches = Table(title="cross-stream encode batching (one forward pass per batch)")
    for col in ("device", "batch", "chunks/s (encode)", "gain", "chunks/s (forward only)", "gain"):
        batches.add_column(col)
    for b in report.batching:
        batches.add_row(b.device, str(b.batch), f"{b.chunks_per_s:.1f}", f"{b.gain:.2f}x",
                        f"{b.forward_chunks_per_s:.1f}", f"{b.forward_gain:.2f}x")
    console.print(batches)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def cli(
    quick: bool = typer.Option(False, help="a short run: 4 chunks and 2 questions per stream, fewer repeats"),
    streams: int = typer.Option(4, min=1, help="streams fed at once"),
    chunks_per_stream: int = typer.Option(8, min=1),
    questions_per_stream: int = typer.Option(4, min=1),
    workers: str = typer.Option("1,2,4", help="worker process counts, comma-separated"),
    batches: str = typer.Option("1,4,8", help="encode batch sizes, comma-separated"),
    model: str = typer.Option("vidmem-tiny", help="the model the workers load"),
    pg_admin_url: str = typer.Option(PG_ADMIN_URL, help="PostgreSQL where a throw-away database is created"),
    redis_url: str = typer.Option(REDIS_URL, help="Redis database used (and FLUSHED) as broker and store"),
) -> None:
    """Chunks/s and questions/s with 1, 2, 4 worker processes, queue latency, cross-stream encode batching."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = BenchConfig(streams=streams, chunks_per_stream=4 if quick else chunks_per_stream,
                      questions_per_stream=2 if quick else questions_per_stream, workers=_ints(workers),
                      batches=_ints(batches), batch_clips=8 if quick else 16, repeats=2 if quick else 3,
                      model=model, pg_admin_url=pg_admin_url, redis_url=redis_url)
    report = run(cfg)
    show(report)
    summary = {
        "machine": report.machine, "config": report.config,
        "scaling": [asdict(r) for r in report.scaling], "batching": [asdict(b) for b in report.batching],
        "chunks_ratio_2w": next((r.chunks_ratio for r in report.scaling if r.workers == 2), None),
        "questions_ratio_2w": next((r.questions_ratio for r in report.scaling if r.workers == 2), None),
        "encode_gain_b8": next((b.gain for b in report.batching if b.batch == 8 and b.device == "cpu"), None),
        "forward_gain_b8": next((b.forward_gain for b in report.batching if b.batch == 8 and b.device == "cpu"),
                                None),
        "median_chunk_wait_s": statistics.median([r.chunk_latency_p50_s for r in report.scaling])
        if report.scaling else None,
    }
    print(json.dumps(summary, default=float))


if __name__ == "__main__":
    typer.run(cli)
