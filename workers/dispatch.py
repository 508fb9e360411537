"""Putting work on the queue: always after the database commit, frames by key.

Used by the ingest manager (chunks), the API (questions) and start-up recovery.
"""

from __future__ import annotations

import logging

import numpy as np
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from store import repo
from store.blobs import pack_frames
from store.db import session_scope
from store.models import ChunkRecord, ChunkStatus, QuestionStatus
from workers import chain, tasks
from workers.runtime import Runtime

log = logging.getLogger(__name__)


class ChunkLost(RuntimeError):
    """A chunk could not be stored after retries; it is counted under ``reason`` and its blob removed."""

    def __init__(self, stream_id: str, seq: int, reason: str, cause: BaseException) -> None:
        super().__init__(f"stream {stream_id} chunk {seq} lost ({reason}): {type(cause).__name__}: {cause}")
        self.reason = reason


# Failures worth another try: a busy or restarting database, a pool out of connections, a blob
# store or broker that is briefly away. Anything else (a bug, a duplicate seq) fails at once.
TRANSIENT = (OperationalError, InterfaceError, SATimeoutError, OSError, RedisError, KombuOperationalError)


def _retrying(rt: Runtime) -> Retrying:
    """Bounded retries: exponential backoff with jitter for at most ``submit_retry_s``."""
    return Retrying(
        stop=stop_after_delay(rt.settings.submit_retry_s),
        wait=wait_random_exponential(multiplier=0.05, max=1.0),
        retry=retry_if_exception_type(TRANSIENT),
        reraise=True,
    )


def submit_chunk(
    rt: Runtime, *, stream_id: str, seq: int, t_start: float, t_end: float,
    images: np.ndarray, timestamps: np.ndarray, motion: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
) -> None:
    """Store a chunk's frames, record it, commit, enqueue, then apply backpressure.

    Each step is retried (``submit_retry_s``); a chunk that still cannot be stored is counted in
    ``rt.chunk_losses`` with the failing step as reason, its blob is deleted, and ChunkLost raised.
    """
    blob_key = f"{stream_id}-{seq}"
    step = "blob_store"
    try:
        _retrying(rt)(rt.blobs.put, blob_key, pack_frames(images, timestamps, motion))
        step = "database"
        _retrying(rt)(_record_chunk, rt, stream_id, seq, t_start, t_end, int(images.shape[0]), blob_key, timings)
    except Exception as exc:
        if not isinstance(exc, IntegrityError):  # else the key is that of an existing, different row
            _forget_blob(rt, blob_key)
        rt.chunk_losses.record(stream_id, step)
        raise ChunkLost(stream_id, seq, step, exc) from exc
    _enqueue_chunk(rt, stream_id, seq)
    try:
        drop_overflow(rt, stream_id)
    except TRANSIENT:
        log.warning("stream %s: backpressure check failed; done at the next chunk", stream_id, exc_info=True)


def _record_chunk(
    rt: Runtime, stream_id: str, seq: int, t_start: float, t_end: float, num_frames: int, blob_key: str,
    timings: dict[str, float] | None,
) -> None:
    """Insert the chunk's row; a retry after a commit whose answer was lost finds it already there."""
    try:
        with session_scope(rt.sessions) as session:
            chunk = repo.create_chunk(
                session, stream_id=stream_id, seq=seq, t_start=t_start, t_end=t_end,
                num_frames=num_frames, blob_key=blob_key,
            )
            chunk.timings = dict(timings or {})
    except IntegrityError:
        with session_scope(rt.sessions) as session:
            existing = repo.get_chunk(session, stream_id=stream_id, seq=seq)
            if existing.t_start != t_start or existing.num_frames != num_frames:
                raise


def _enqueue_chunk(rt: Runtime, stream_id: str, seq: int) -> None:
    """Start the stream's chain unless one is active (it will reach this chunk in order).

    If the database or broker stays away the row stays pending; the workers' recovery check
    starts the chain within ``recovery_check_s``.
    """
    try:
        _retrying(rt)(chain.kick_stream, rt, stream_id)
    except TRANSIENT:
        log.error("stream %s chunk %d: stored but its chain not started; the workers' recovery check will",
                  stream_id, seq, exc_info=True)


def _forget_blob(rt: Runtime, blob_key: str) -> None:
    """A chunk without a row must not leave its frames behind (housekeeping catches what this misses)."""
    try:
        rt.blobs.delete(blob_key)
    except TRANSIENT:
        log.warning("blob %s of a lost chunk not deleted now; housekeeping will", blob_key)


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
    """At ``vidmem serve``'s start and after it restarted its worker: queue again what was lost.

    The dead worker of this host is forgotten at once (its process is gone), so its question and
    chain are re-queued now rather than when its heartbeat ages out; queued questions are queued
    again too, and so are queued chains, since the file broker loses a message taken by a killed
    worker (a duplicate is harmless: the first delivery claims the question or the chain).
    Returns (questions, chains) queued.
    """
    with session_scope(rt.sessions) as session:
        queued = [q.id for q in repo.unfinished_questions(session) if q.status == QuestionStatus.queued]
    chain.reap_local_dead_workers(rt)
    found = chain.recover_lost_work(rt)
    chain.requeue_queued_chains(rt)
    for question_id in queued:
        tasks.answer_question.delay(question_id)
    return found.questions + len(queued), found.chains + found.started
