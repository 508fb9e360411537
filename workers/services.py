"""The work behind the tasks: apply a chunk to its stream's memory, answer a question.

Each function takes ids, re-reads what it needs, checks its own preconditions and is idempotent:
running it twice, or after a worker died half-way, leaves the same result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from compression.memory import Memory
from compression.registry import SelectContext, build_method, state_from_bytes, state_to_bytes
from compression.tokens import StoredFormatError, TokenBlock
from store import repo
from store.blobs import unpack_frames
from store.db import session_scope
from store.memory_store import MemoryRecord
from store.models import ChunkStatus, QuestionStatus, utcnow
from workers.runtime import Runtime

log = logging.getLogger(__name__)

NO_VIDEO_ANSWER = "No video seen yet on this stream: there is nothing to answer from."
UNTRAINED_PREFIX = "[untrained model] "


class NotReadyYet(Exception):
    """An earlier chunk of the stream is still pending: try again shortly."""


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

    @classmethod
    def fresh(cls, rt: Runtime) -> StreamMemory:
        stage1 = build_method(rt.settings.stage1, stage=1)
        return cls(0, -1, Memory(rt.settings.memory_budget), stage1.init_state(), 0)

    @classmethod
    def load(cls, rt: Runtime, stream_id: str) -> StreamMemory:
        record = rt.memory_store.load(stream_id)
        if record is None:
            return cls.fresh(rt)
        try:  # safetensors + JSON only: a compromised store can make this fail, never run code
            extra = state_from_bytes(record.state)
            memory = Memory.from_bytes(record.memory)
        except StoredFormatError as exc:
            raise StoredFormatError(f"stored memory of stream {stream_id} refused: {exc}") from None
        frames_seen, stage1 = extra.get("frames_seen"), extra.get("stage1")
        if type(frames_seen) is not int or frames_seen < 0 or not isinstance(stage1, dict):
            raise StoredFormatError(f"stored memory of stream {stream_id} refused: malformed stage-1 state")
        return cls(record.version, record.last_seq, memory, stage1, frames_seen)

    def to_record(self) -> MemoryRecord:
        state = state_to_bytes({"stage1": self.stage1_state, "frames_seen": self.frames_seen})
        return MemoryRecord(self.version, self.last_seq, self.memory.to_bytes(), state, self.memory.num_tokens)


def apply_chunk(rt: Runtime, stream_id: str, seq: int) -> str:
    """Encode chunk ``seq``, compress it (stage 1) and append it to the stream's memory.

    Applied exactly once and in order: a chunk at or below the memory's last applied seq is
    skipped; one whose predecessors are still pending raises NotReadyYet.
    """
    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=seq)
        blob_key, chunk_status = chunk.blob_key, chunk.status
    if chunk_status in (ChunkStatus.applied, ChunkStatus.failed):
        return f"chunk already {chunk_status}"
    current = StreamMemory.load(rt, stream_id)
    if seq <= current.last_seq:
        _finish_chunk(rt, stream_id, seq, ChunkStatus.applied)
        return "chunk already in memory"
    _check_order(rt, stream_id, seq, current.last_seq)
    if chunk_status == ChunkStatus.dropped:
        return "chunk dropped by backpressure"
    blob = rt.blobs.get(blob_key)
    if blob is None:
        _finish_chunk(rt, stream_id, seq, ChunkStatus.failed, error="frames expired before processing")
        return "frames expired"
    updated, figures = _compress_into_memory(rt, current, blob, seq)
    if not rt.memory_store.save(stream_id, updated.to_record(), expected_version=current.version):
        raise ConcurrentUpdate(f"memory of stream {stream_id} changed while applying chunk {seq}")
    _finish_chunk(rt, stream_id, seq, ChunkStatus.applied, **figures)
    rt.blobs.delete(blob_key)
    log.info("stream %s chunk %d applied: %s", stream_id, seq, figures)
    return "applied"


def _check_order(rt: Runtime, stream_id: str, seq: int, last_seq: int) -> None:
    with session_scope(rt.sessions) as session:
        earlier = repo.chunks_before(session, stream_id=stream_id, seq=seq, after=last_seq)
        waiting = [c.seq for c in earlier if c.status == ChunkStatus.pending]
    if waiting:
        raise NotReadyYet(f"stream {stream_id} chunk {seq} waits for chunks {waiting}")


def _compress_into_memory(rt: Runtime, current: StreamMemory, blob: bytes, seq: int) -> tuple[StreamMemory, dict]:
    images, timestamps, motion = unpack_frames(blob)
    model = rt.model  # loaded on first use: not part of the encode time
    t0 = time.perf_counter()
    block = model.encode(images, timestamps.tolist(), frame_offset=current.frames_seen)
    if motion is not None:
        block = _with_motion(block, motion)
    t1 = time.perf_counter()
    stage1 = build_method(rt.settings.stage1, stage=1)
    state, compressed = stage1.update(current.stage1_state, block)
    memory = current.memory.append(compressed)
    t2 = time.perf_counter()
    updated = StreamMemory(
        current.version + 1, seq, memory, state, current.frames_seen + int(images.shape[0])
    )
    figures = {
        "tokens_in": int(block.features.shape[0] * block.features.shape[1]),
        "tokens_out": len(compressed),
        "timings": {"encode_ms": (t1 - t0) * 1e3, "compress_ms": (t2 - t1) * 1e3},
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


def _finish_chunk(rt: Runtime, stream_id: str, seq: int, status: str, **figures) -> None:  # type: ignore[no-untyped-def]
    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=seq)
        chunk.status = status
        chunk.error = figures.get("error")
        chunk.tokens_in = figures.get("tokens_in", chunk.tokens_in)
        chunk.tokens_out = figures.get("tokens_out", chunk.tokens_out)
        chunk.timings = {**(chunk.timings or {}), **figures.get("timings", {})}
        chunk.applied_at = utcnow()


def answer_question(rt: Runtime, question_id: str) -> str:
    """Answer a queued question over its stream's memory and store the answer row."""
    with session_scope(rt.sessions) as session:
        question = repo.get_question(session, question_id)
        if question.status in (QuestionStatus.done, QuestionStatus.failed):
            return f"question already {question.status}"
        question.status = QuestionStatus.running
        question.started_at = utcnow()
        question.attempts += 1
        stream_id, text = question.stream_id, question.text
        window = (question.window_start, question.window_end)
    current = StreamMemory.load(rt, stream_id)
    tokens = current.memory.window(*window)
    if len(tokens) == 0:
        _store_answer(rt, question_id, answer=NO_VIDEO_ANSWER, before=0, after=0, timings={})
        return "no video yet"
    t0 = time.perf_counter()
    stage2 = build_method(rt.settings.stage2, stage=2)
    model = rt.model
    selected = stage2.select(tokens, rt.settings.llm_budget, SelectContext(question=text, model=model))
    t1 = time.perf_counter()
    answer = model.answer(text, selected, max_new_tokens=rt.settings.max_new_tokens)
    prefix = "" if model.trained else UNTRAINED_PREFIX
    timings = {"select_ms": (t1 - t0) * 1e3, "prefill_ms": answer.prefill_ms, "decode_ms": answer.decode_ms}
    _store_answer(
        rt, question_id, answer=prefix + answer.text.strip(), before=len(tokens), after=len(selected),
        timings=timings, model=model.name,
    )
    log.info("question %s answered over %d/%d tokens", question_id, len(selected), len(tokens))
    return "answered"


def _store_answer(
    rt: Runtime, question_id: str, *, answer: str, before: int, after: int, timings: dict, model: str | None = None
) -> None:
    settings = rt.settings
    with session_scope(rt.sessions) as session:
        question = repo.get_question(session, question_id)
        question.status = QuestionStatus.done
        question.answer = answer
        question.visual_tokens_before = before
        question.visual_tokens_after = after
        question.timings = timings
        question.model = model or settings.model
        question.method = (
            f"stage1={settings.stage1}; memory_budget={settings.memory_budget}; "
            f"stage2={settings.stage2}; llm_budget={settings.llm_budget}"
        )
        question.finished_at = utcnow()


def fail_question(rt: Runtime, question_id: str, error: str) -> None:
    with session_scope(rt.sessions) as session:
        question = repo.get_question(session, question_id)
        question.status = QuestionStatus.failed
        question.error = error
        question.finished_at = utcnow()


def fail_chunk(rt: Runtime, stream_id: str, seq: int, error: str) -> None:
    _finish_chunk(rt, stream_id, seq, ChunkStatus.failed, error=error)
