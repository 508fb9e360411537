"""No chunk is lost without a counted reason; orphaned blobs and old chunk rows are removed.

Real SQLite (and PostgreSQL where it differs), real blob files, the embedded file broker.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import TimeoutError as PoolTimeout

from store import repo
from store.db import session_scope
from store.models import ChunkRecord, ChunkStatus, Stream, utcnow
from workers import housekeeping
from workers.app import create_celery
from workers.dispatch import ChunkLost, submit_chunk
from workers.runtime import Runtime

FRAMES = np.zeros((2, 16, 16, 3), np.uint8)
STAMPS = np.array([0.0, 0.5])


@pytest.fixture(params=["sqlite", "postgresql"])
def runtime(request, settings):  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        settings = settings.model_copy(update={"database_url": request.getfixturevalue("postgres_url")})
    settings = settings.model_copy(update={"submit_retry_s": 0.6, "api_pool_size": 2, "api_pool_timeout_s": 0.3})
    settings.ensure_dirs()
    create_celery(settings)
    return Runtime(settings, auto_upgrade=True)


@pytest.fixture
def stream_id(runtime) -> str:  # type: ignore[no-untyped-def]
    with session_scope(runtime.sessions) as session:
        return repo.create_stream(session, name="cam", source_url="rtsp://192.0.2.1/x").id


def submit(rt: Runtime, stream_id: str, seq: int) -> None:
    submit_chunk(rt, stream_id=stream_id, seq=seq, t_start=2.0 * seq, t_end=2.0 * seq + 2,
                 images=FRAMES, timestamps=STAMPS)


def chunk_rows(rt: Runtime, stream_id: str) -> dict[int, str]:
    with session_scope(rt.sessions) as session:
        rows = session.execute(select(ChunkRecord.seq, ChunkRecord.status).where(ChunkRecord.stream_id == stream_id))
        return dict(rows.all())


def blob_keys(rt: Runtime) -> set[str]:
    return {key for key, _ in rt.blobs.entries()}


def age(rt: Runtime, key: str, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(rt.blobs.root / key, (old, old))  # type: ignore[attr-defined]


def test_submit_chunk_when_api_pool_is_exhausted_still_stores_through_ingest_pool(runtime, stream_id):
    ingest = runtime.for_role("ingest")
    held = [runtime.sessions() for _ in range(runtime.settings.api_pool_size)]
    try:
        for session in held:
            session.connection()  # every API connection checked out, as under a flood of requests
        # the API's next request waits at most api_pool_timeout_s, then fails (answered 503 by the API)
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match="QueuePool limit"):
            runtime.sessions().connection()
        assert time.monotonic() - started < 2.0
        # while ingest, on its own pool, stores its chunk at once
        submit(ingest, stream_id, 0)
    finally:
        for session in held:
            session.close()

    assert ingest.engine is not runtime.engine
    assert chunk_rows(runtime, stream_id) == {0: ChunkStatus.pending}
    assert blob_keys(runtime) == {f"{stream_id}-0"}


def break_blob_store(rt: Runtime) -> None:
    """The blob folder replaced by a plain file: every put fails with an OSError, as on a lost disk."""
    root = rt.blobs.root  # type: ignore[attr-defined]
    root.rename(root.with_name("blobs-away"))
    root.write_bytes(b"")


def mend_blob_store(rt: Runtime) -> None:
    root = rt.blobs.root  # type: ignore[attr-defined]
    root.unlink()
    root.with_name("blobs-away").rename(root)


def test_submit_chunk_when_blob_store_fails_briefly_retries_then_stores(runtime, stream_id):
    rt = Runtime(runtime.settings.model_copy(update={"submit_retry_s": 10.0}), role="ingest")
    break_blob_store(rt)
    mender = threading.Timer(0.5, mend_blob_store, args=(rt,))
    mender.start()
    started = time.monotonic()
    submit(rt, stream_id, 0)
    mender.join()

    assert time.monotonic() - started >= 0.5, "the first puts failed and were retried"
    assert chunk_rows(rt, stream_id) == {0: ChunkStatus.pending}
    assert blob_keys(rt) == {f"{stream_id}-0"}
    assert rt.chunk_losses.stats(stream_id) == {"chunks_lost": 0, "chunks_lost_reasons": {}}


def test_submit_chunk_when_blob_store_stays_down_counts_the_loss(runtime, stream_id):
    rt = runtime.for_role("ingest")
    break_blob_store(rt)
    try:
        with pytest.raises(ChunkLost, match=r"chunk 0 lost \(blob_store\): (FileNotFound|NotADirectory)Error"):
            submit(rt, stream_id, 0)
    finally:
        mend_blob_store(rt)

    assert rt.chunk_losses.stats(stream_id) == {"chunks_lost": 1, "chunks_lost_reasons": {"blob_store": 1}}
    assert chunk_rows(rt, stream_id) == {}
    assert blob_keys(rt) == set()


def test_submit_chunk_when_its_row_is_refused_counts_the_loss_and_deletes_the_blob(runtime, stream_id):
    rt = runtime.for_role("ingest")
    with session_scope(rt.sessions) as session:  # the stream deleted while its ingest still runs
        session.delete(repo.get_stream(session, stream_id))

    with pytest.raises(ChunkLost, match=r"chunk 0 lost \(database\)"):
        submit(rt, stream_id, 0)

    assert rt.chunk_losses.stats(stream_id) == {"chunks_lost": 1, "chunks_lost_reasons": {"database": 1}}
    assert chunk_rows(rt, stream_id) == {}
    assert blob_keys(rt) == set(), "the frames of a chunk that never got a row are deleted"


def test_sweep_blobs_when_orphaned_or_expired_deletes_them_and_keeps_pending_ones(runtime, stream_id):
    rt = runtime.for_role("ingest")
    for seq in range(3):
        submit(rt, stream_id, seq)
    with session_scope(rt.sessions) as session:
        repo.get_chunk(session, stream_id=stream_id, seq=1).status = ChunkStatus.failed  # its blob stayed
    rt.blobs.put("lost-7", b"frames of a chunk whose row was never written")
    rt.blobs.put("young-8", b"a chunk whose row is being written now")
    rt.blobs.put("expired-9", b"past the time-to-live")
    for key in (f"{stream_id}-0", f"{stream_id}-1", "lost-7"):
        age(rt, key, 600)
    age(rt, "expired-9", rt.settings.blob_ttl_seconds + 10)

    expired, orphaned = housekeeping.sweep_blobs(rt)

    assert (expired, orphaned) == (1, 2)
    assert blob_keys(rt) == {f"{stream_id}-0", f"{stream_id}-2", "young-8"}, "pending chunks keep their frames"


def test_prune_chunks_when_past_retention_deletes_finished_rows_and_keeps_their_counts(runtime, stream_id):
    rt = runtime.for_role("ingest").for_role("ingest")
    for seq in range(5):
        submit(rt, stream_id, seq)
    old = utcnow() - timedelta(seconds=rt.settings.chunk_retention_s + 60)
    with session_scope(rt.sessions) as session:
        for seq, status in ((0, ChunkStatus.applied), (1, ChunkStatus.dropped), (2, ChunkStatus.pending),
                            (3, ChunkStatus.applied), (4, ChunkStatus.applied)):
            chunk = repo.get_chunk(session, stream_id=stream_id, seq=seq)
            chunk.status = status
            chunk.created_at = old if seq != 3 else utcnow()
            if status == ChunkStatus.applied:
                chunk.tokens_in, chunk.tokens_out = 10 * (seq + 1), seq + 1
        repo.set_stream_stats(session, stream_id=stream_id, stats={"chunks_emitted": 5})

    pruned = housekeeping.prune_chunk_rows(rt)
    with session_scope(rt.sessions) as session:  # ingest's next stats write must keep the tally
        repo.set_stream_stats(session, stream_id=stream_id, stats={"chunks_emitted": 6})
        stats = session.scalar(select(Stream.stats).where(Stream.id == stream_id))

    assert pruned == 2
    assert chunk_rows(rt, stream_id) == {2: ChunkStatus.pending, 3: ChunkStatus.applied, 4: ChunkStatus.applied}, (
        "pending rows, young rows and the newest row (ingest resumes after it) stay"
    )
    assert stats == {"chunks_emitted": 6, "chunks_pruned": {"applied": 1, "dropped": 1},
                     "tokens_pruned": {"in": 10, "out": 1}}, "token totals (/metrics) keep the pruned applied row's"


def test_prune_chunks_when_retention_is_zero_keeps_everything(runtime, stream_id):
    rt = Runtime(runtime.settings.model_copy(update={"chunk_retention_s": 0}))
    for seq in range(2):
        submit(rt, stream_id, seq)
    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=0)
        chunk.status, chunk.created_at = ChunkStatus.applied, utcnow() - timedelta(days=400)

    assert housekeeping.prune_chunk_rows(rt) == 0
    assert chunk_rows(rt, stream_id) == {0: ChunkStatus.applied, 1: ChunkStatus.pending}
