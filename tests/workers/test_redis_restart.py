"""Redis restarted mid-stream in distributed mode: a private redis-server without persistence, killed and restarted.

Ingest (the manager), a worker process and PostgreSQL keep running; Redis holds the broker's
queues, the frame blobs and the streams' memory, and loses all of them. The memory comes back
from its snapshot in the database (written with every applied chunk), so only the chunks in
flight are lost, recorded as a gap.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from store import db, repo
from store.db import session_scope
from store.memory_store import MemoryRecord
from store.models import ChunkRecord, ChunkStatus
from vidmem.processes import WorkerProcess
from workers.app import create_celery
from workers.chain import memory_invariant_problems
from workers.dispatch import enqueue_question
from workers.ingest_manager import IngestManager
from workers.redis_watch import FRAMES_LOST
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(240)

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """Poll ``fetch`` until ``done`` holds; connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fetch()
            if done(last):
                return last
        except (OSError, httpx.TransportError, redis.RedisError) as exc:  # a server not (yet, again) up
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out; last value {last!r}")


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port, persistence off; ``restart`` keeps the port."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=log, stderr=log)
        wait_for(lambda: self.client().ping(), bool, timeout=10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _chunks(runtime: Runtime, stream_id: str) -> list[tuple[int, str, str | None]]:
    with session_scope(runtime.sessions) as session:
        rows = session.query(ChunkRecord).filter(ChunkRecord.stream_id == stream_id).order_by(ChunkRecord.seq)
        return [(r.seq, str(r.status), r.error) for r in rows]


def _applied_after(runtime: Runtime, stream_id: str, seq: int) -> list[int]:
    return [s for s, status, _ in _chunks(runtime, stream_id) if s > seq and status == ChunkStatus.applied]


def _stream_stats(runtime: Runtime, stream_id: str) -> dict[str, Any]:
    with session_scope(runtime.sessions) as session:
        return dict(repo.get_stream(session, stream_id).stats or {})


def _caught_up(rows: list[tuple[int, str, str | None]]) -> bool:
    """Two chunks applied and none pending: the worker idles, the next chunk's task waits on the queue."""
    return sum(r[1] == ChunkStatus.applied for r in rows) >= 2 and all(r[1] != ChunkStatus.pending for r in rows)


def _held_question(runtime: Runtime, stream_id: str, faults: Path) -> str:
    """A question the worker takes and then holds (``test_fault_dir``): it takes nothing else meanwhile."""
    with session_scope(runtime.sessions) as session:
        question_id = repo.create_question(session, stream_id=stream_id, text="What moves?").id
    (faults / f"hold-{question_id}").touch()
    enqueue_question(question_id)
    wait_for(lambda: (faults / f"holding-{question_id}").exists(), bool, timeout=30)
    return question_id


def _queued_question(runtime: Runtime, stream_id: str) -> str:
    with session_scope(runtime.sessions) as session:
        question_id = repo.create_question(session, stream_id=stream_id, text="What colour is it?").id
    enqueue_question(question_id)
    return question_id


def _question_status(runtime: Runtime, question_id: str) -> str:
    with session_scope(runtime.sessions) as session:
        return str(repo.get_question(session, question_id).status)


def _memory_or_none(runtime: Runtime, stream_id: str) -> MemoryRecord | None:
    try:
        return runtime.memory_store.load(stream_id)
    except redis.RedisError:
        return None


def test_redis_restart_when_killed_mid_stream_restores_the_memory_and_loses_only_chunks_in_flight(
    settings, postgres_url, make_h264, tmp_path,
):
    redis_server = PrivateRedis(tmp_path / "redis")
    redis_server.start()
    db.upgrade(postgres_url)
    faults = tmp_path / "faults"
    faults.mkdir()
    settings = settings.model_copy(update={"database_url": postgres_url, "broker_url": redis_server.url,
                                           "chunk_seconds": 1.0, "sample_fps": 2.0, "test_fault_dir": faults})
    settings.ensure_dirs()
    runtime = Runtime(settings)
    create_celery(settings)
    worker = WorkerProcess(settings.model_copy(update={"data_dir": settings.data_dir / "w1"}))
    manager = IngestManager(runtime, poll_seconds=0.2)
    stream_id = "not-created-yet"
    try:
        worker.start()
        with session_scope(runtime.sessions) as session:
            stream_id = repo.create_stream(session, name="cam", source_url=str(make_h264(tmp_path / "c.mp4")),
                                           loop=True).id
        manager.start()
        wait_for(lambda: _chunks(runtime, stream_id), _caught_up, timeout=90)
        # given chunks in flight: stored, their chain's task on the queue (the worker is busy with a question)
        question_id = _held_question(runtime, stream_id, faults)
        waiting_id = _queued_question(runtime, stream_id)  # its task waits on the queue behind the held one
        wait_for(lambda: _chunks(runtime, stream_id), lambda rows: sum(r[1] == ChunkStatus.pending for r in rows) >= 2,
                 timeout=30)
        before = runtime.memory_store.load(stream_id)  # no chunk is applied while the worker holds the question
        # when Redis dies (persistence off: queues, frame blobs and memory go with it) and is back 2 s later
        redis_server.kill()
        in_flight = [seq for seq, status, _ in _chunks(runtime, stream_id) if status == ChunkStatus.pending]
        time.sleep(2.0)
        redis_server.start()
        # then ingest puts the memory back from its snapshot: everything applied before the chunks in flight
        restored = wait_for(lambda: _memory_or_none(runtime, stream_id), lambda record: record is not None, 30)
        (faults / f"hold-{question_id}").unlink()  # the worker goes on, on connections made afresh
        # then ingest records new chunks and the worker applies them
        wait_for(lambda: _applied_after(runtime, stream_id, max(in_flight)), lambda applied: len(applied) >= 3,
                 timeout=60)
        manager.write_stats(force=True)
        question = _question_status(runtime, question_id)
        waiting = wait_for(lambda: _question_status(runtime, waiting_id), lambda status: status == "done", 30)
    finally:
        manager.stop()
        worker.stop()
        record = _memory_or_none(runtime, stream_id)  # read once the worker is done, while Redis still runs
        problems = memory_invariant_problems(runtime, stream_id) if record is not None else ["no memory"]
        redis_server.stop()
    assert before is not None and restored == before, "the memory Redis lost came back as it was"
    assert before.last_seq == min(in_flight) - 1, (before.last_seq, in_flight)  # all but the chunks in flight
    rows = _chunks(runtime, stream_id)
    seqs = [seq for seq, _, _ in rows]
    assert seqs == list(range(len(seqs))), rows  # ingest went on: no seq skipped or reused
    # the loss is exactly the chunks in flight, each failed with its reason (a recorded gap)
    failed = {seq: error for seq, status, error in rows if status == ChunkStatus.failed}
    being_stored = max(in_flight) + 1  # its frames may have reached Redis just before it died, its row after
    assert set(in_flight) <= set(failed) <= {*in_flight, being_stored}, (in_flight, rows)
    assert all(error in (FRAMES_LOST, "frames expired before processing") for error in failed.values()), failed
    assert all(status == ChunkStatus.applied for seq, status, _ in rows if seq < min(in_flight)), rows
    assert len([seq for seq, status, _ in rows if seq > being_stored and status == ChunkStatus.applied]) >= 2
    # and the stream's counts show it: the chunks the restart lost, and the memory restored from its snapshot
    with session_scope(runtime.sessions) as session:
        assert repo.chunk_counts(session, stream_id=stream_id)["failed"] == len(failed)
    reasons = _stream_stats(runtime, stream_id)["chunks_lost_reasons"]
    assert "memory_reset" not in reasons, reasons  # restored, not started afresh
    assert "memory_rollback" not in reasons, reasons  # a snapshot with every chunk: none applied after it
    # (a chunk the paused worker held may be failed by it first, with its own reason, and is then not counted twice)
    assert sum(e == FRAMES_LOST for e in failed.values()) <= reasons.get("redis_restart", 0) <= len(failed), reasons
    # and the memory continues from the restored one: applied rows = chunks in memory, gaps recorded
    last_applied = max(seq for seq, status, _ in rows if status == ChunkStatus.applied)
    assert record is not None and record.last_seq == last_applied, (record and record.last_seq, rows)
    assert record.version == sum(status == ChunkStatus.applied for _, status, _ in rows), (record.version, rows)
    assert problems == [], problems
    assert question == "done"  # the worker held across the restart finished it on new connections
    assert waiting == "done"  # the question whose task Redis lost was queued again
