"""Recovery without ``vidmem serve``: workers SIGKILLed while they hold work, and a poison question.

Five real ``vidmem worker`` processes on PostgreSQL and Redis share the module (starting them is
the slow part); both tests kill some. The test-only hooks of ``test_fault_dir`` stop a worker at
a known point: ``hold-<key>`` makes it wait (writing its pid to ``holding-<key>``), ``crash-<key>``
makes it SIGKILL itself.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from sqlalchemy import create_engine, text

from store import db, repo
from store.db import session_scope
from store.models import LeaseState, Question, StreamLease
from tests.conftest import PG_ADMIN_URL, make_settings, need_service
from tests.workers.cluster import (
    FAST_RECOVERY,
    all_settled,
    attempts_of,
    chunk_frames,
    private_redis,
    record_chunks,
    start_workers,
    stop_workers,
    wait_for,
    wait_ready,
)
from workers import chain
from workers.app import create_celery
from workers.dispatch import enqueue_question
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(300)

WORKERS = 5  # the kill test kills two, the poison question two more; one is left


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    need_service("PostgreSQL", "127.0.0.1", 5432)
    folder = tmp_path_factory.mktemp("cluster")
    with private_redis(folder / "redis") as redis_url:
        yield from _cluster(folder, redis_url)


def _cluster(folder, redis_url):  # type: ignore[no-untyped-def]
    name = f"vidmem_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    procs: list = []
    try:
        db.upgrade(url)
        (folder / "faults").mkdir()
        settings = make_settings(folder).model_copy(update={
            "database_url": url, "broker_url": redis_url, "max_attempts": 2, "test_fault_dir": folder / "faults",
            **FAST_RECOVERY,
        })
        settings.ensure_dirs()
        create_celery(settings)
        procs = start_workers(settings, folder, WORKERS)
        wait_ready(folder, procs, timeout=180)
        yield Runtime(settings, role="ingest"), procs, folder / "faults"
    finally:
        stop_workers(procs)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _new_stream(rt: Runtime, chunks: int) -> str:
    with session_scope(rt.sessions) as session:
        stream_id = repo.create_stream(session, name="cam", source_url="rtsp://127.0.0.1/x").id
    record_chunks(rt, stream_id, chunk_frames(7, chunks))
    return stream_id


def _start_chain(rt: Runtime, stream_id: str) -> None:
    """Kick the stream's chain, unless the workers' recovery sweep (every second) already did."""
    if not chain.kick_stream(rt, stream_id):
        with session_scope(rt.sessions) as session:
            assert session.get(StreamLease, stream_id).state != LeaseState.idle, "no chain started"


def _new_question(rt: Runtime, stream_id: str, text: str = "What is in view?") -> str:
    with session_scope(rt.sessions) as session:
        return repo.create_question(session, stream_id=stream_id, text=text).id


def _question(rt: Runtime, question_id: str) -> Question:
    with session_scope(rt.sessions) as session:
        return repo.get_question(session, question_id)


def _held_by(faults, key: str) -> int:  # type: ignore[no-untyped-def]
    holding = faults / f"holding-{key}"
    return int(wait_for(lambda: holding.exists() and holding.read_text().strip(), 60))


def _lease_state(rt: Runtime, stream_id: str) -> str:
    with session_scope(rt.sessions) as session:
        return session.get(StreamLease, stream_id).state


def _worker_ids(rt: Runtime) -> dict[int, str]:
    with session_scope(rt.sessions) as session:
        return {w.pid: w.id for w in repo.list_workers(session)}


def _alive(procs) -> list[int]:  # type: ignore[no-untyped-def]
    return [p.pid for p in procs if p.poll() is None]


def test_sigkill_workers_holding_a_chunk_and_a_question_others_finish_both_exactly_once(cluster):
    rt, procs, faults = cluster
    with session_scope(rt.sessions) as session:
        stream_id = repo.create_stream(session, name="cam", source_url="rtsp://127.0.0.1/x").id
        question_id = repo.create_question(session, stream_id=stream_id, text="What is in view?").id
    # given one worker held while it encodes chunk 1 and another while it answers the question
    # (the holds exist before the chunks: a recovery sweep may start the chain as soon as they do)
    (faults / f"hold-{stream_id}-1").touch()
    (faults / f"hold-{question_id}").touch()
    record_chunks(rt, stream_id, chunk_frames(7, 3))
    _start_chain(rt, stream_id)
    enqueue_question(question_id)
    chunk_pid, question_pid = _held_by(faults, f"{stream_id}-1"), _held_by(faults, question_id)
    with session_scope(rt.sessions) as session:
        token = session.get(StreamLease, stream_id).token
    killed = {_worker_ids(rt)[chunk_pid], _worker_ids(rt)[question_pid]}
    # when both are SIGKILLed (and the holds lifted, so that the next worker is not held too)
    for pid in (chunk_pid, question_pid):
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    (faults / f"hold-{stream_id}-1").unlink()
    (faults / f"hold-{question_id}").unlink()
    # then the other workers finish both within 60 s
    wait_for(lambda: all_settled(rt, [stream_id]) and _question(rt, question_id).status == "done"
             and _lease_state(rt, stream_id) == LeaseState.idle, 60, 0.05)  # the chain ends after its last chunk
    elapsed = time.monotonic() - started
    question = _question(rt, question_id)
    assert elapsed < 60, elapsed
    assert question.attempts == 2 and question.worker_id not in killed and question.answer
    with session_scope(rt.sessions) as session:
        assert repo.chunk_counts(session, stream_id=stream_id) == {"pending": 0, "applied": 3, "dropped": 0,
                                                                    "failed": 0}
        assert repo.running_questions(session) == []
        assert session.get(StreamLease, stream_id).state == LeaseState.idle
        assert not chain.live_workers(session, rt) & killed, "the killed workers count as dead"
    assert attempts_of(rt, stream_id) == {0: 1, 1: 2, 2: 1}
    assert rt.memory_store.load(stream_id).version == 3, "each chunk applied exactly once"
    assert chain.memory_invariant_problems(rt, stream_id) == []
    # and the broker redelivering the killed workers' messages later changes nothing
    finished = question.finished_at
    chain.publish_chunk(stream_id, 1, token)
    enqueue_question(question_id)
    time.sleep(2.0)
    assert rt.memory_store.load(stream_id).version == 3
    assert _question(rt, question_id).finished_at == finished
    assert sorted(set(_alive(procs)) | {chunk_pid, question_pid}) == sorted(p.pid for p in procs)
    assert chunk_pid not in _alive(procs) and question_pid not in _alive(procs)


def test_poison_question_that_kills_its_workers_fails_after_max_attempts(cluster):
    rt, procs, faults = cluster
    stream_id = _new_stream(rt, 1)
    _start_chain(rt, stream_id)
    question_id = _new_question(rt, stream_id, "poison")
    alive = _alive(procs)
    assert len(alive) >= 3, "the module's workers"
    # given a question whose task kills the worker that takes it
    (faults / f"crash-{question_id}").touch()
    # when it is queued
    enqueue_question(question_id)
    # then it kills max_attempts (2) workers and fails with the reason, without an answer
    question = wait_for(lambda: (q := _question(rt, question_id)).status == "failed" and q, 60)
    assert question.attempts == 2 and question.answer is None
    assert question.error.startswith("question killed its worker 2 times"), question.error
    assert len(_alive(procs)) == len(alive) - 2
    # and the workers left answer the next question
    (faults / f"crash-{question_id}").unlink()
    healthy = _new_question(rt, stream_id)
    enqueue_question(healthy)
    assert wait_for(lambda: (q := _question(rt, healthy)).status in ("done", "failed") and q, 60).status == "done"
    assert all_settled(rt, [stream_id]) and chain.memory_invariant_problems(rt, stream_id) == []
