"""Putting work on the queue: always after the database commit, frames by key.

Used by the ingest manager (chunks), the API (questions) and start-up recovery.
"""

from __future__ import annotations

import logging

import numpy as np
from sqlalchemy import update

from store import repo
from store.blobs import pack_frames
from store.db import session_scope
from store.models import ChunkRecord, ChunkStatus
from workers import tasks
from workers.runtime import Runtime

log = logging.getLogger(__name__)


def submit_chunk(
    rt: Runtime, *, stream_id: str, seq: int, t_start: float, t_end: float,
    images: np.ndarray, timestamps: np.ndarray, motion: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
) -> None:
    """Store a chunk's frames, record it, commit, enqueue, then apply backpressure."""
    blob_key = f"{stream_id}-{seq}"
    rt.blobs.put(blob_key, pack_frames(images, timestamps, motion))
    with session_scope(rt.sessions) as session:
        chunk = repo.create_chunk(
            session, stream_id=stream_id, seq=seq, t_start=t_start, t_end=t_end,
            num_frames=int(images.shape[0]), blob_key=blob_key,
        )
        chunk.timings = dict(timings or {})
    tasks.process_chunk.delay(stream_id, seq)
    drop_overflow(rt, stream_id)


def drop_overflow(rt: Runtime, stream_id: str) -> int:
    """Drop the oldest pending chunks of a stream beyond ``max_pending_chunks`` (DROP_OLDEST).

    Only this stream is affected; a dropped chunk's task sees the status and skips it.
    """
    limit = rt.settings.max_pending_chunks
    with session_scope(rt.sessions) as session:
        pending = repo.pending_chunks(session, stream_id=stream_id)
        overflow = [c.seq for c in pending[: max(0, len(pending) - limit)]]
        if overflow:
            session.execute(
                update(ChunkRecord)
                .where(ChunkRecord.stream_id == stream_id, ChunkRecord.seq.in_(overflow),
                       ChunkRecord.status == ChunkStatus.pending)
                .values(status=ChunkStatus.dropped, error="dropped: workers fell behind")
            )
            log.warning("stream %s: workers behind, dropped chunks %s", stream_id, overflow)
    for seq in overflow:
        rt.blobs.delete(f"{stream_id}-{seq}")
    return len(overflow)


def enqueue_question(question_id: str) -> None:
    tasks.answer_question.delay(question_id)


def recover_unfinished(rt: Runtime) -> tuple[int, int]:
    """Re-enqueue questions and chunks a dead worker left behind (tasks are idempotent)."""
    with session_scope(rt.sessions) as session:
        questions = [q.id for q in repo.unfinished_questions(session)]
        chunks = [
            (c.stream_id, c.seq)
            for s in repo.list_streams(session)
            for c in repo.pending_chunks(session, stream_id=s.id)
        ]
    for question_id in questions:
        tasks.answer_question.delay(question_id)
    for stream_id, seq in chunks:
        tasks.process_chunk.delay(stream_id, seq)
    return len(questions), len(chunks)
