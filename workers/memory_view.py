"""What ``GET /streams/{id}/memory`` shows: a stream's memory against its budget, the time it covers, a timeline.

Read from the memory store and the chunk rows, never from a worker. The timeline attributes each
token held to the applied chunk whose [t_start, t_end) holds its ``time``: a merged token stands
for content from its ``t_start`` to its ``time`` and counts for the chunk of its latest content,
so merging moves older content into later chunks and eviction empties the oldest ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from compression.memory import Memory
from compression.tokens import StoredFormatError
from store.models import ChunkRecord, ChunkStatus, Stream
from workers import stream_settings
from workers.runtime import Runtime


@dataclass(frozen=True)
class ChunkTokens:
    seq: int
    t_start: float
    t_end: float
    tokens_in: int | None
    tokens_out: int | None
    tokens_now: int


def inspect(rt: Runtime, session: Session, stream: Stream, *, limit: int) -> dict:
    """The fields of ``MemoryPublic`` for ``stream``; its newest ``limit`` applied chunks in the timeline."""
    budget = stream_settings.effective(rt.settings, stream.settings).memory_budget
    record = rt.memory_store.load(stream.id)
    if record is None:
        memory, version, nbytes = Memory(budget), 0, 0
    else:
        try:
            memory = Memory.from_bytes(record.memory)
        except StoredFormatError as exc:
            raise StoredFormatError(f"stored memory of stream {stream.id} refused: {exc}") from None
        version, nbytes = record.version, record.nbytes
    tokens = memory.tokens
    first = float(tokens.side["t_start"].min()) if len(tokens) and "t_start" in tokens.side else None
    first = float(tokens.time.min()) if first is None and len(tokens) else first
    last = float(tokens.time.max()) if len(tokens) else None
    span = (last - first) if first is not None and last is not None else 0.0
    chunks = _applied_chunks(session, stream.id, limit)
    timeline, before = _timeline(tokens.time, chunks)
    return {
        "stream_id": stream.id, "budget": budget, "budget_held": memory.budget_tokens if record else None,
        "tokens": memory.num_tokens, "bytes": nbytes, "version": version, "chunks_applied": memory.chunks_applied,
        "tokens_seen": memory.tokens_seen, "tokens_merged": memory.tokens_merged,
        "tokens_evicted": memory.tokens_evicted, "first_seconds": first, "last_seconds": last,
        "first_time": _wall(stream.media_epoch, first), "last_time": _wall(stream.media_epoch, last),
        "span_seconds": span, "tokens_per_minute": memory.num_tokens / (span / 60.0) if span > 0 else None,
        "timeline": [c.__dict__ for c in timeline], "tokens_before_timeline": before,
    }


def _applied_chunks(session: Session, stream_id: str, limit: int) -> list[ChunkRecord]:
    query = (select(ChunkRecord).where(ChunkRecord.stream_id == stream_id, ChunkRecord.status == ChunkStatus.applied)
             .order_by(ChunkRecord.seq.desc()).limit(limit))
    return list(reversed(list(session.scalars(query))))


def _timeline(times: torch.Tensor, chunks: list[ChunkRecord]) -> tuple[list[ChunkTokens], int]:
    """Tokens per chunk (by the chunk whose [t_start, t_end) holds each token's time), and tokens before them.

    A token after the last chunk's end (its t_end is exclusive, the last frame sits at it when the
    chunk was flushed) counts for the last chunk; one between two chunks (a gap) for the earlier.
    """
    if not chunks:
        return [], len(times)
    starts = torch.tensor([c.t_start for c in chunks], dtype=torch.float64)
    slot = torch.searchsorted(starts, times.to(torch.float64).cpu(), right=True) - 1  # -1: before the first chunk
    counts = torch.bincount(slot[slot >= 0], minlength=len(chunks)).tolist()
    timeline = [ChunkTokens(c.seq, c.t_start, c.t_end, c.tokens_in, c.tokens_out, n) for c, n in zip(chunks, counts,
                                                                                                        strict=True)]
    return timeline, int((slot < 0).sum())


def _wall(epoch: datetime | None, seconds: float | None) -> datetime | None:
    if epoch is None or seconds is None:
        return None
    return epoch + timedelta(seconds=seconds)
