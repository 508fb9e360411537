"""Memory snapshots in the database: written with each applied chunk, restored when Redis loses the memory.

A private redis-server holds the memories; "Redis lost everything" is ``FLUSHALL`` on it (the
restart itself, with real worker processes, is tests/workers/test_redis_restart.py). Chunks are
applied in this process by the worker's own service functions, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from store import db, repo, snapshots
from store.blobs import pack_frames
from store.db import session_scope
from store.memory_store import MemoryFormatError, MemoryRecord
from store.models import ChunkRecord, ChunkStatus, MemorySnapshot
from tests.workers.cluster import assert_same_memory, chunk_frames, private_redis, record_chunks, reference_memory
from vidmem.settings import Settings
from workers import chain, services
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str | None:  # type: ignore[no-untyped-def]
    """The database URL (None: SQLite under the data folder), migrated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vidmem.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
    db.upgrade(url)
    return url


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with private_redis(tmp_path / "redis") as url:
        yield url


def distributed(settings: Settings, database: str, redis_url: str, **extra) -> Runtime:  # type: ignore[no-untyped-def]
    """A worker's runtime whose memories live in Redis (the broker stays embedded: nothing is queued here)."""
    settings = settings.model_copy(update={"database_url": database, "redis_url": redis_url, **extra})
    settings.ensure_dirs()
    return Runtime(settings, role="worker")


def new_stream(rt: Runtime) -> str:
    with session_scope(rt.sessions) as session:
        return repo.create_stream(session, name="cam", source_url="rtsp://127.0.0.1/cam").id


def apply(rt: Runtime, stream_id: str, seqs: range | list[int]) -> None:
    assert [services.apply_chunk(rt, stream_id, seq) for seq in seqs] == ["applied"] * len(seqs)


def lose_redis(rt: Runtime, stream_id: str, chunks, seqs: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Redis forgets everything; the frames of chunks ``seqs`` (still pending) are stored again as ingest would."""
    rt.redis.flushall()
    for seq in seqs:
        images, stamps = chunks[seq]
        rt.blobs.put(f"{stream_id}-{seq}", pack_frames(images, stamps))


def rows(rt: Runtime, stream_id: str) -> dict[int, tuple[str, str | None]]:
    with session_scope(rt.sessions) as session:
        return {c.seq: (str(c.status), c.error) for c in repo.list_chunks(session, stream_id=stream_id)}


def snapshot_of(rt: Runtime, stream_id: str) -> MemoryRecord | None:
    with session_scope(rt.sessions) as session:
        return snapshots.load(session, stream_id)


def test_apply_chunk_when_memory_is_in_redis_writes_its_snapshot_with_the_row(settings, database, redis_url):
    rt = distributed(settings, database, redis_url)
    stream_id = new_stream(rt)
    record_chunks(rt, stream_id, chunk_frames(1, 2))

    apply(rt, stream_id, range(2))

    snapshot, live = snapshot_of(rt, stream_id), rt.memory_store.load(stream_id)
    assert snapshot is not None and live is not None
    assert (snapshot.version, snapshot.last_seq) == (2, 1)
    assert (snapshot.memory, snapshot.state) == (live.memory, live.state)


def test_restore_when_redis_lost_the_memory_continues_from_the_snapshot_with_nothing_lost(
    settings, database, redis_url,
):
    rt = distributed(settings, database, redis_url)
    stream_id = new_stream(rt)
    chunks = chunk_frames(2, 4)
    record_chunks(rt, stream_id, chunks)
    apply(rt, stream_id, range(3))

    lose_redis(rt, stream_id, chunks, [3])
    apply(rt, stream_id, [3])

    assert all(status == ChunkStatus.applied for status, _ in rows(rt, stream_id).values())
    assert chain.memory_invariant_problems(rt, stream_id) == []
    assert_same_memory(services.StreamMemory.load(rt, stream_id).memory, reference_memory(settings, chunks))


def test_restore_when_the_snapshot_is_older_records_the_chunks_after_it_as_a_gap(settings, database, redis_url):
    rt = distributed(settings, database, redis_url, snapshot_every=2)
    stream_id = new_stream(rt)
    chunks = chunk_frames(3, 4)
    record_chunks(rt, stream_id, chunks)
    apply(rt, stream_id, range(3))  # snapshots at versions 2 (chunk 1); chunk 2 only in Redis

    lose_redis(rt, stream_id, chunks, [3])
    apply(rt, stream_id, [3])

    statuses = rows(rt, stream_id)
    assert statuses[2] == (ChunkStatus.failed, snapshots.LOST_AFTER_SNAPSHOT), statuses
    assert [seq for seq, (status, _) in statuses.items() if status == ChunkStatus.applied] == [0, 1, 3]
    assert chain.memory_invariant_problems(rt, stream_id) == []
    want = reference_memory(settings.model_copy(update={"data_dir": settings.data_dir / "ref"}),
                            [chunks[0], chunks[1], chunks[3]])
    assert_same_memory(services.StreamMemory.load(rt, stream_id).memory, want)


def test_load_when_redis_lost_the_memory_gives_questions_the_restored_memory(settings, database, redis_url):
    rt = distributed(settings, database, redis_url)
    stream_id = new_stream(rt)
    record_chunks(rt, stream_id, chunk_frames(4, 2))
    apply(rt, stream_id, range(2))
    before = services.StreamMemory.load(rt, stream_id)

    rt.redis.flushall()
    after = services.StreamMemory.load(rt, stream_id)

    assert (after.version, after.last_seq, after.frames_seen) == (2, 1, before.frames_seen)
    assert_same_memory(after.memory, before.memory)
    assert rt.memory_store.load(stream_id) is not None, "put back into Redis, not only read"


def test_restore_when_another_process_restored_first_changes_nothing(settings, database, redis_url):
    rt = distributed(settings, database, redis_url, snapshot_every=2)
    stream_id = new_stream(rt)
    record_chunks(rt, stream_id, chunk_frames(5, 3))
    apply(rt, stream_id, range(3))
    rt.redis.flushall()

    first = snapshots.restore(rt.sessions, rt.memory_store, stream_id)
    second = snapshots.restore(rt.sessions, rt.memory_store, stream_id)

    assert first is not None and first.lost == [2] and first.record.version == 2
    assert second is None
    assert chain.memory_invariant_problems(rt, stream_id) == []


def test_save_when_an_older_version_arrives_keeps_the_newer_snapshot(settings, database, redis_url):
    rt = distributed(settings, database, redis_url)
    stream_id = new_stream(rt)
    newer, older = MemoryRecord(5, 4, b"new", b"{}", 1), MemoryRecord(4, 3, b"old", b"{}", 1)

    with session_scope(rt.sessions) as session:
        snapshots.save(session, stream_id, newer)
    with session_scope(rt.sessions) as session:
        snapshots.save(session, stream_id, older)

    assert snapshot_of(rt, stream_id) == newer


def test_restore_when_the_snapshot_is_not_a_record_refuses_it(settings, database, redis_url):
    rt = distributed(settings, database, redis_url)
    stream_id = new_stream(rt)
    record_chunks(rt, stream_id, chunk_frames(6, 1))
    apply(rt, stream_id, [0])
    with session_scope(rt.sessions) as session:
        session.execute(update(MemorySnapshot).values(record=b"\x80\x04cos\nsystem\n."))  # a pickle
    rt.redis.flushall()

    with pytest.raises(MemoryFormatError, match="older vidmem"):
        services.StreamMemory.load(rt, stream_id)
    assert rt.memory_store.load(stream_id) is None


def test_apply_chunk_when_embedded_writes_no_snapshot(settings):
    settings.ensure_dirs()
    rt = Runtime(settings, auto_upgrade=True, role="worker")
    stream_id = new_stream(rt)
    record_chunks(rt, stream_id, chunk_frames(7, 2))

    apply(rt, stream_id, range(2))

    with session_scope(rt.sessions) as session:
        assert session.scalars(select(MemorySnapshot)).all() == []
        assert session.scalars(select(ChunkRecord.status)).all() == [ChunkStatus.applied] * 2


def test_apply_chunk_when_snapshots_are_off_writes_none(settings, database, redis_url):
    rt = distributed(settings, database, redis_url, snapshot_every=0)
    stream_id = new_stream(rt)
    record_chunks(rt, stream_id, chunk_frames(8, 1))

    apply(rt, stream_id, [0])

    assert snapshot_of(rt, stream_id) is None
