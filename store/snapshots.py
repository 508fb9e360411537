"""Durable copies of the streams' memories in the database, for when Redis loses the live ones.

In distributed mode a stream's memory lives in Redis; run without persistence, a Redis restart
loses it. After a chunk is applied the worker writes the memory (every ``snapshot_every`` chunks)
to ``memory_snapshots`` in the same transaction that marks the chunk applied, so a snapshot
never runs ahead of the rows. When a memory is found missing, :func:`restore` puts the snapshot
back into the memory store (compare-and-set on an absent record: of several restorers one wins)
and records the chunks applied after the snapshot as a gap: ``failed`` with :data:`LOST_AFTER_SNAPSHOT`.
So "applied rows = chunks in memory, with every gap giving its reason" holds again.

The blob is the memory store's own encoding (safetensors + JSON, :func:`store.memory_store.encode_record`):
a compromised database can make a restore fail, never run code.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from store.db import session_scope
from store.memory_store import MemoryRecord, MemoryStore, decode_record, encode_record
from store.models import ChunkRecord, ChunkStatus, MemorySnapshot, utcnow

LOST_AFTER_SNAPSHOT = ("lost with the stream's memory: applied, then Redis lost the memory, and its last snapshot "
                       "in the database (VIDMEM_SNAPSHOT_EVERY) was older or missing")


def save(session: Session, stream_id: str, record: MemoryRecord) -> None:
    """Upsert the stream's snapshot; an older version never replaces a newer one."""
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[session.get_bind().dialect.name]
    values = {"stream_id": stream_id, "version": record.version, "last_seq": record.last_seq,
              "record": encode_record(record), "saved_at": utcnow()}
    statement = insert(MemorySnapshot).values(**values)
    session.execute(statement.on_conflict_do_update(
        index_elements=[MemorySnapshot.stream_id],
        set_={k: statement.excluded[k] for k in ("version", "last_seq", "record", "saved_at")},
        where=MemorySnapshot.version < statement.excluded.version,
    ))


def load(session: Session, stream_id: str) -> MemoryRecord | None:
    """The stream's snapshot, or None; raises MemoryFormatError for a blob that is not a record."""
    data = session.scalar(select(MemorySnapshot.record).where(MemorySnapshot.stream_id == stream_id))
    return None if data is None else decode_record(bytes(data), stream_id)


@dataclass(frozen=True)
class Restored:
    """A memory put back from its snapshot, and the chunks applied after it that it does not hold."""

    record: MemoryRecord
    lost: list[int]


def restore(sessions: sessionmaker[Session], store: MemoryStore, stream_id: str) -> Restored | None:
    """Put the stream's snapshot back into ``store`` if its memory is missing there; None when not restored.

    None: no snapshot, or a memory is in the store (another worker restored it first, or a chunk
    started a memory): the caller loads again. The chunks applied after the snapshot are marked
    as a gap once the restore won, so a losing restorer never marks chunks the live memory holds.
    """
    with session_scope(sessions) as session:
        record = load(session, stream_id)
        if record is None:
            return None
        after = list(session.scalars(
            select(ChunkRecord.seq).where(ChunkRecord.stream_id == stream_id, ChunkRecord.seq > record.last_seq,
                                          ChunkRecord.status == ChunkStatus.applied).order_by(ChunkRecord.seq)))
    if not store.save(stream_id, record, expected_version=0):
        return None
    return Restored(record, mark_lost(sessions, stream_id, after))


def mark_lost(sessions: sessionmaker[Session], stream_id: str, seqs: list[int]) -> list[int]:
    """Record applied chunks the memory no longer holds as a gap with its reason; the seqs marked."""
    if not seqs:
        return []
    with session_scope(sessions) as session:
        marked = session.execute(
            update(ChunkRecord)
            .where(ChunkRecord.stream_id == stream_id, ChunkRecord.seq.in_(seqs),
                   ChunkRecord.status == ChunkStatus.applied)
            .values(status=ChunkStatus.failed, error=LOST_AFTER_SNAPSHOT)
            .returning(ChunkRecord.seq)
            .execution_options(synchronize_session=False)).scalars()
        return sorted(marked)
