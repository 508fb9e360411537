"""Distributed mode: Redis broker and memory store, PostgreSQL, two worker processes.

Whichever worker takes a chunk, each chunk is applied to its stream's memory exactly once and
in order. Redis is a private redis-server (tests/workers/cluster.py), not the machine's shared
database 15, whose queues other processes' workers could drain.
"""

from __future__ import annotations

import time

import pytest

from store import db, repo, snapshots
from store.db import session_scope
from tests.workers.cluster import private_redis
from vidmem.processes import WorkerProcess
from workers.app import create_celery
from workers.ingest_manager import IngestManager
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def distributed_settings(settings, postgres_url, tmp_path):  # type: ignore[no-untyped-def]
    db.upgrade(postgres_url)  # what `vidmem db upgrade` does
    with private_redis(tmp_path / "redis") as redis_url:
        yield settings.model_copy(update={"database_url": postgres_url, "broker_url": redis_url})


def test_two_workers_apply_every_chunk_once_in_order(distributed_settings, make_h264, tmp_path):
    settings = distributed_settings
    settings.ensure_dirs()
    runtime = Runtime(settings)
    create_celery(settings)
    workers = [WorkerProcess(settings.model_copy(update={"data_dir": settings.data_dir / f"w{i}"})) for i in (1, 2)]
    for worker in workers:
        worker.start()
    manager = IngestManager(runtime, poll_seconds=0.1)
    try:
        video = make_h264(tmp_path / "clip.mp4", seconds=10.0, fps=10)
        with session_scope(runtime.sessions) as session:
            stream_id = repo.create_stream(session, name="cam", source_url=str(video)).id
        manager.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with session_scope(runtime.sessions) as session:
                status = repo.get_stream(session, stream_id).status
                counts = repo.chunk_counts(session, stream_id=stream_id)
            if status == "ended" and counts["pending"] == 0:
                break
            time.sleep(0.2)
    finally:
        manager.stop()
        for worker in workers:
            worker.stop()

    assert counts == {"pending": 0, "applied": 5, "dropped": 0, "failed": 0}
    record = runtime.memory_store.load(stream_id)
    assert record is not None and record.last_seq == 4 and record.version == 5, "each chunk exactly once"
    with session_scope(runtime.sessions) as session:
        snapshot = snapshots.load(session, stream_id)
    assert snapshot == record, "the memory's durable copy is the memory"
