"""The work behind the tasks: apply a chunk to its stream's memory, answer a question.

Each function takes ids, re-reads what it needs, checks its own preconditions and is idempotent:
running it twice, or after a worker died half-way, leaves the same result.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from sqlalchemy import update

from compression.memory import Memory
from compression.pipeline import Pipeline, PipelineState
from compression.registry import state_from_bytes, state_to_bytes
from compression.tokens import StoredFormatError, TokenBlock
from store import repo, snapshots
from store.blobs import unpack_frames
from store.db import session_scope
from store.memory_store import MemoryRecord
from store.models import FINAL_QUESTION_STATUSES, ChunkStatus, Question, QuestionStatus, utcnow
from workers import alert_schedule, asking, chain, redis_watch, stream_settings
from workers.batching import Encoded
from workers.runtime import Runtime

log = logging.getLogger(__name__)

NO_VIDEO_ANSWER = "No video seen yet on this stream: there is nothing to answer from."
UNTRAINED_PREFIX = "[untrained model] "


class NotReadyYet(Exception):
    """An earlier chunk of the stream is still pending (a guard: the stream's chain never asks for such a chunk)."""


class ConcurrentUpdate(Exception):
    """Another worker changed the stream's memory first: try again."""


@dataclass(frozen=True)
class StreamMemory:
    """A stream's memory, the stage-1 state and bookkeeping, as loaded from the memory store."""

    version: int
    last_seq: int
    memory: Memory
    stage1_state: object
    frames_seen: int
    stage1_spec: str | None = None  # the method ``stage1_state`` belongs to (None: written before per-stream specs)

    @classmethod
    def fresh(cls, rt: Runtime, pipeline: Pipeline | None = None) -> StreamMemory:
        pipe = pipeline or rt.pipeline
        start = pipe.init()
        return cls(0, -1, start.memory, start.stage1, 0, pipe.stage1_spec)

    @property
    def pipeline_state(self) -> PipelineState:
        return PipelineState(self.stage1_state, self.memory)  # type: ignore[arg-type] - a dict, checked at load

    @classmethod
    def load(cls, rt: Runtime, stream_id: str, pipeline: Pipeline | None = None) -> StreamMemory:
        """The stored memory, set up for ``pipeline`` (the stream's, ``workers.stream_settings``) when given.

        A changed memory budget takes effect at the next append; a changed stage-1 method starts
        from its own fresh state (the old one's state means nothing to it).
        """
        record = redis_watch.restore_memory(rt, stream_id)  # a memory Redis lost comes back from its snapshot
        if record is None:
            return cls.fresh(rt, pipeline)
        try:  # safetensors + JSON only: a compromised store can make this fail, never run code
            extra = state_from_bytes(record.state)
            memory = Memory.from_bytes(record.memory)
        except StoredFormatError as exc:
            raise StoredFormatError(f"stored memory of stream {stream_id} refused: {exc}") from None
        frames_seen, stage1 = extra.get("frames_seen"), extra.get("stage1")
        if type(frames_seen) is not int or frames_seen < 0 or not isinstance(stage1, dict):
            raise StoredFormatError(f"stored memory of stream {stream_id} refused: malformed stage-1 state")
        spec = extra.get("stage1_spec")
        spec = spec if isinstance(spec, str) else None
        if pipeline is not None:
            if memory.budget_tokens != pipeline.memory_budget:
                memory = replace(memory, budget_tokens=pipeline.memory_budget)
            if spec is not None and spec != pipeline.stage1_spec:
                stage1 = pipeline.init().stage1
            spec = pipeline.stage1_spec
        return cls(record.version, record.last_seq, memory, stage1, frames_seen, spec)

    def to_record(self) -> MemoryRecord:
        extra = {"stage1": self.stage1_state, "frames_seen": self.frames_seen}
        state = state_to_bytes(extra if self.stage1_spec is None else {**extra, "stage1_spec": self.stage1_spec})
        return MemoryRecord(self.version, self.last_seq, self.memory.to_bytes(), state, self.memory.num_tokens)


def apply_chunk(rt: Runtime, stream_id: str, seq: int) -> str:
    """Encode chunk ``seq``, compress it (stage 1) and append it to the stream's memory.

    Applied exactly once and in order: the stream's chain (``workers.chain``) hands each worker
    the stream's lowest pending chunk, one at a time. A chunk the memory already holds (the
    worker died between saving the memory and its row) is marked applied; one behind the memory
    is a recorded gap; one whose predecessors are still pending raises NotReadyYet (a guard: the
    chain never asks for it).
    """
    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=seq)
        blob_key, chunk_status = chunk.blob_key, chunk.status
        pipeline = rt.pipelines.get(stream_settings.read(session, rt.settings, stream_id).pipeline_spec)
    if chunk_status in (ChunkStatus.applied, ChunkStatus.failed):
        return f"chunk already {chunk_status}"
    current = StreamMemory.load(rt, stream_id, pipeline)
    if seq == current.last_seq:  # the worker that saved it died before its row (and snapshot)
        snapshot = redis_watch.snapshot_due(rt, current.to_record())
        _finish_chunk(rt, stream_id, seq, ChunkStatus.applied, snapshot=snapshot)
        return "chunk already in memory"
    if seq < current.last_seq:  # never relabelled applied: the memory does not hold it
        if chunk_status == ChunkStatus.pending:
            _finish_chunk(rt, stream_id, seq, ChunkStatus.dropped, error="dropped: later chunks were applied first")
        return "chunk behind the memory"
    _check_order(rt, stream_id, seq, current.last_seq)
    if chunk_status == ChunkStatus.dropped:
        return "chunk dropped by backpressure"
    blob = rt.blobs.get(blob_key)
    if blob is None:
        _finish_chunk(rt, stream_id, seq, ChunkStatus.failed, error="frames expired before processing")
        return "frames expired"
    _fault_point(rt, f"{stream_id}-{seq}")
    updated, figures = _compress_into_memory(rt, current, blob, seq, pipeline)
    record = updated.to_record()
    if not rt.memory_store.save(stream_id, record, expected_version=current.version):
        raise ConcurrentUpdate(f"memory of stream {stream_id} changed while applying chunk {seq}")
    _finish_chunk(rt, stream_id, seq, ChunkStatus.applied, snapshot=redis_watch.snapshot_due(rt, record), **figures)
    alert_schedule.after_chunk_applied(rt, stream_id, seq, blob)  # queues due alerts' evaluations; never raises
    rt.blobs.delete(blob_key)
    log.info("stream %s chunk %d applied: %s", stream_id, seq, figures)
    return "applied"


def _check_order(rt: Runtime, stream_id: str, seq: int, last_seq: int) -> None:
    """Raise NotReadyYet if a chunk between the memory's last one and ``seq`` is pending.

    The row of the memory's last chunk is set applied if it is not: a worker died between
    saving the memory and its row, and backpressure may have dropped the row meanwhile. Rows
    applied after the memory's last chunk are not in it (Redis lost the memory, which came back
    from an older snapshot or afresh): they are recorded as a gap.
    """
    with session_scope(rt.sessions) as session:
        earlier = repo.chunks_before(session, stream_id=stream_id, seq=seq, after=last_seq - 1)
        lost = [c.seq for c in earlier if c.seq > last_seq and c.status == ChunkStatus.applied]
        if lost:
            log.warning("stream %s chunks %s were applied but are not in its memory: recorded as lost", stream_id,
                        lost)
        for chunk in earlier:
            if chunk.seq in lost:
                chunk.status, chunk.error = ChunkStatus.failed, snapshots.LOST_AFTER_SNAPSHOT
        for chunk in earlier:
            if chunk.seq == last_seq and chunk.status != ChunkStatus.applied:
                log.warning("stream %s chunk %d is in memory but was %s: marked applied", stream_id, chunk.seq,
                            chunk.status)
                chunk.status, chunk.error, chunk.applied_at = ChunkStatus.applied, None, utcnow()
        waiting = [c.seq for c in earlier if c.seq > last_seq and c.status == ChunkStatus.pending]
    if waiting:
        raise NotReadyYet(f"stream {stream_id} chunk {seq} waits for chunks {waiting}")


def _compress_into_memory(rt: Runtime, current: StreamMemory, blob: bytes, seq: int,
                          pipeline: Pipeline | None = None) -> tuple[StreamMemory, dict]:
    """One chunk through :func:`compress_chunks` (its encode still shares a batch with other threads')."""
    return compress_chunks(rt, [ChunkWork("", current, blob, seq, pipeline)])[0]


@dataclass(frozen=True)
class ChunkWork:
    """One stream's next chunk to apply: its memory as loaded, the chunk's frames blob and seq."""

    stream_id: str
    current: StreamMemory
    blob: bytes
    seq: int
    pipeline: Pipeline | None = None  # the stream's (stage 1, memory budget); None: the deployment's


def compress_chunks(rt: Runtime, items: Sequence[ChunkWork]) -> list[tuple[StreamMemory, dict]]:
    """Encode the chunks of several streams in shared forward passes, then run stage 1 on each stream.

    Returns each stream's updated memory and the chunk's figures, in the order of ``items``; nothing is
    saved here. Encodes of other threads of this process join the same batch (``rt.encoder``). One item
    per stream: two chunks of one stream would both be applied to the same memory.
    """
    streams = [w.stream_id for w in items if w.stream_id]
    if len(set(streams)) != len(streams):
        raise ValueError("compress_chunks takes at most one chunk per stream")
    from vlm.batch import Clip

    with rt.encoder.expecting():
        frames = [unpack_frames(w.blob) for w in items]
        clips = [Clip(images, ts.tolist(), w.current.frames_seen)
                 for (images, ts, _), w in zip(frames, items, strict=True)]
        encoded = rt.encoder.encode(clips)
    return [_stage1(rt, w, enc, images.shape[0], motion)
            for w, enc, (images, _, motion) in zip(items, encoded, frames, strict=True)]


def _stage1(rt: Runtime, work: ChunkWork, encoded: Encoded, num_frames: int,
            motion: np.ndarray | None) -> tuple[StreamMemory, dict]:
    block = encoded.block if motion is None else _with_motion(encoded.block, motion)
    pipe = work.pipeline or rt.pipeline
    t0 = time.perf_counter()
    state, compressed = pipe.step(work.current.pipeline_state, block)
    t1 = time.perf_counter()
    current = work.current
    updated = StreamMemory(current.version + 1, work.seq, state.memory, state.stage1, current.frames_seen + num_frames,
                           pipe.stage1_spec)
    figures = {
        "tokens_in": int(block.features.shape[0] * block.features.shape[1]),
        "tokens_out": len(compressed),
        "timings": {"encode_ms": encoded.encode_ms, "encode_batch": encoded.batch, "compress_ms": (t1 - t0) * 1e3},
    }
    return updated, figures


def _with_motion(block: TokenBlock, motion: np.ndarray) -> TokenBlock:
    """The ingest's motion magnitudes [F, h, w] on the token grid, as ``side["motion"]`` [F', N].

    Families whose token frame spans several video frames (Qwen: a temporal patch of 2) average them.
    """
    rows, cols = block.grid
    frames = block.features.shape[0]
    grids = torch.as_tensor(motion, dtype=torch.float32)
    per = -(-grids.shape[0] // frames)  # video frames per token frame
    if grids.shape[0] != per * frames:  # pad with the last frame so the groups are even
        grids = torch.cat([grids, grids[-1:].expand(per * frames - grids.shape[0], -1, -1)])
    grids = grids.reshape(frames, per, *grids.shape[1:]).mean(1)
    pooled = torch.nn.functional.adaptive_avg_pool2d(grids[:, None], (rows, cols)).reshape(frames, rows * cols)
    return replace(block, side={**block.side, "motion": pooled.to(block.features.device)})


def _finish_chunk(rt: Runtime, stream_id: str, seq: int, status: str, *,  # type: ignore[no-untyped-def]
                  snapshot: MemoryRecord | None = None, **figures) -> None:
    """Record what happened to the chunk; ``snapshot`` (the memory holding it) is written in the same transaction."""
    with session_scope(rt.sessions) as session:
        if snapshot is not None:  # never ahead of the rows: both commit together or neither does
            snapshots.save(session, stream_id, snapshot)
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=seq)
        chunk.status = status
        chunk.error = figures.get("error")
        chunk.tokens_in = figures.get("tokens_in", chunk.tokens_in)
        chunk.tokens_out = figures.get("tokens_out", chunk.tokens_out)
        chunk.timings = {**(chunk.timings or {}), **figures.get("timings", {})}
        chunk.applied_at = utcnow()


def answer_question(rt: Runtime, question_id: str) -> str:
    """Answer a queued question over its stream's memory and store the answer row.

    Its window (a relative one ends at the memory's newest time) and its overrides of the stream's
    stage 2, LLM budget and answer length are resolved here (``workers.asking``) and recorded.
    """
    job = claim_question(rt, question_id, chain.worker_id())
    if isinstance(job, str):
        return job
    _fault_point(rt, question_id)
    pipeline, specs = asking.pipeline(rt, job)  # built once per spec and process
    current = StreamMemory.load(rt, job.stream_id)
    start, end = asking.window(job, current.memory)
    tokens = current.memory.window(start, end)
    seen = asking.Seen((start, end), asking.covered(tokens, start, end), current.memory.num_tokens, specs,
                       job.media_epoch)
    if len(tokens) == 0:
        _store_answer(rt, question_id, answer=asking.nothing_in_window(current.memory), before=0, after=0,
                      timings={}, method=pipeline.describe(), seen=seen)
        return "no video yet"
    model = rt.model
    t0 = time.perf_counter()
    selected = pipeline.choose(tokens, job.text, model)
    t1 = time.perf_counter()
    answer = model.answer(job.text, selected, max_new_tokens=specs["max_answer_tokens"])
    prefix = "" if model.trained else UNTRAINED_PREFIX
    timings = {"select_ms": (t1 - t0) * 1e3, "prefill_ms": answer.prefill_ms, "decode_ms": answer.decode_ms}
    _store_answer(
        rt, question_id, answer=prefix + answer.text.strip(), before=len(tokens), after=len(selected),
        timings=timings, model=model.name, method=pipeline.describe(), seen=seen,
    )
    log.info("question %s answered over %d/%d tokens", question_id, len(selected), len(tokens))
    return "answered"


def claim_question(rt: Runtime, question_id: str, holder: str) -> asking.Job | str:
    """Mark the question ``running`` on ``holder`` and return what answering it needs; or why not.

    A question finished or cancelled, or running on a live worker, is left alone (a duplicate
    delivery, or a cancel that came first); one running on a dead worker is taken over.
    ``attempts`` counts deliveries and, with the status, serves as the row's version, so of two
    workers claiming at once, or a worker and a cancel, one wins; one already delivered
    ``max_attempts`` times (it killed its workers) fails with that reason instead.
    """
    now = utcnow()
    with session_scope(rt.sessions) as session:
        question = repo.get_question(session, question_id)
        status, attempts = question.status, question.attempts
        if status in FINAL_QUESTION_STATUSES:
            return f"question already {status}"
        if status == QuestionStatus.running and question.worker_id in chain.live_workers(session, rt, now):
            return f"question running on worker {question.worker_id}"
        if attempts >= rt.settings.max_attempts:
            question.status, question.worker_id = QuestionStatus.failed, None
            question.error, question.finished_at = chain.killed_reason("question", attempts), now
            log.error("question %s failed: delivered %d times without finishing", question_id, attempts)
            return "failed: killed its workers"
        claimed = session.execute(
            update(Question).where(Question.id == question_id, Question.attempts == attempts,
                                   Question.status == status)
            .values(status=QuestionStatus.running, worker_id=holder, started_at=now, attempts=attempts + 1)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return "question claimed by another worker or cancelled"
        return asking.Job.of(question, question.stream.media_epoch)


def _fault_point(rt: Runtime, key: str) -> None:
    """Tests only (``test_fault_dir`` set): die here, or wait here, to stop a worker at a known point.

    ``crash-<key>`` SIGKILLs this process; ``hold-<key>`` makes it write its pid to ``holding-<key>``
    and wait until the hold file is removed. Keys: a question id, or ``<stream id>-<seq>``.
    """
    folder = rt.settings.test_fault_dir
    if folder is None:
        return
    if (folder / f"crash-{key}").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    hold = folder / f"hold-{key}"
    if hold.exists():
        (folder / f"holding-{key}").write_text(f"{os.getpid()}\n")
        while hold.exists():
            time.sleep(0.05)


def _store_answer(
    rt: Runtime, question_id: str, *, answer: str, before: int, after: int, timings: dict, model: str | None = None,
    method: str | None = None, seen: asking.Seen | None = None,
) -> None:
    settings = rt.settings
    with session_scope(rt.sessions) as session:
        question = repo.get_question(session, question_id)
        if seen is not None:
            asking.record(question, seen)
        question.status = QuestionStatus.done
        question.answer = answer
        question.visual_tokens_before = before
        question.visual_tokens_after = after
        question.timings = timings
        question.model = model or settings.model
        question.method = method or rt.pipeline_spec.describe()
        question.finished_at = utcnow()


def fail_question(rt: Runtime, question_id: str, error: str) -> None:
    with session_scope(rt.sessions) as session:
        question = repo.get_question(session, question_id)
        question.status = QuestionStatus.failed
        question.error = error
        question.finished_at = utcnow()


def fail_chunk(rt: Runtime, stream_id: str, seq: int, error: str) -> None:
    _finish_chunk(rt, stream_id, seq, ChunkStatus.failed, error=error)
