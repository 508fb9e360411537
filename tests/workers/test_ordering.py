"""Per-stream order by design: one chain of chunk tasks per stream, no task retried for ordering.

The first tests drive the chain in this process on the embedded stores and the file broker,
reading the tasks it queues back from the broker; the last runs three streams on two real
worker processes (PostgreSQL, Redis) and compares each memory with one built in order here.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from store import db, repo
from store.db import session_scope
from store.models import LeaseState, StreamLease, WorkerBeat, utcnow
from tests.conftest import make_settings
from tests.workers.cluster import (
    FAST_RECOVERY,
    all_settled,
    assert_same_memory,
    attempts_of,
    chunk_frames,
    log_of,
    private_redis,
    queued_chunk_tasks,
    record_chunks,
    reference_memory,
    start_workers,
    stop_workers,
    wait_for,
    wait_ready,
)
from vidmem.cli import app as cli
from workers import chain, services
from workers.app import ALERT_QUEUE, CHUNK_QUEUE, QUESTION_QUEUE, create_celery, parse_queues, worker_argv
from workers.dispatch import recover_unfinished, submit_chunk
from workers.runtime import Runtime


@pytest.fixture
def worker_app(settings):  # type: ignore[no-untyped-def]
    """The Celery app of an embedded worker, its runtime in this process."""
    settings.ensure_dirs()
    app = create_celery(settings)
    app.vidmem_runtime = Runtime(settings, auto_upgrade=True, role="worker")  # type: ignore[attr-defined]
    return app


@pytest.fixture
def stream_id(worker_app):  # type: ignore[no-untyped-def]
    """A stream with chunks 0, 1, 2 stored and pending, nothing queued yet."""
    rt = worker_app.vidmem_runtime
    with session_scope(rt.sessions) as session:
        sid = repo.create_stream(session, name="cam", source_url="rtsp://127.0.0.1/x").id
    record_chunks(rt, sid, chunk_frames(0, 3))
    return sid


def _deliver(app, *args):  # type: ignore[no-untyped-def]
    return app.tasks["vidmem.chunks.process"].apply(args=args).get()


def _lease(rt: Runtime, stream_id: str) -> tuple[str, int, str | None]:
    with session_scope(rt.sessions) as session:
        lease = session.get(StreamLease, stream_id)
        return lease.state, lease.token, lease.holder


def test_chain_with_duplicate_and_out_of_order_deliveries_applies_each_chunk_once_in_order(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    # given a stream whose chain was started: one task on the queue, a second start queues nothing
    assert chain.kick_stream(rt, stream_id) is True
    assert chain.kick_stream(rt, stream_id) is False
    assert queued_chunk_tasks(worker_app) == [[stream_id, 0, 1]]
    # when the task runs, then chunk 0 is applied and the task of chunk 1 is queued, with a new token
    assert _deliver(worker_app, stream_id, 0, 1) == "applied"
    assert queued_chunk_tasks(worker_app) == [[stream_id, 1, 2]]
    # when the first task is delivered again, or a task arrives with an old token, then nothing happens
    assert _deliver(worker_app, stream_id, 0, 1).startswith("stale delivery")
    assert _deliver(worker_app, stream_id, 2, 0).startswith("stale delivery")
    assert queued_chunk_tasks(worker_app) == []
    # and the chain goes on in order to its end, leaving the lease idle
    assert _deliver(worker_app, stream_id, 1, 2) == "applied"
    assert queued_chunk_tasks(worker_app) == [[stream_id, 2, 3]]
    assert _deliver(worker_app, stream_id, 2, 3) == "applied"
    assert queued_chunk_tasks(worker_app) == []
    assert _lease(rt, stream_id) == (LeaseState.idle, 3, None)
    record = rt.memory_store.load(stream_id)
    assert (record.version, record.last_seq) == (3, 2)
    assert attempts_of(rt, stream_id) == {0: 1, 1: 1, 2: 1}, "each chunk delivered once"
    assert chain.memory_invariant_problems(rt, stream_id) == []


def test_submit_chunk_while_chain_runs_queues_nothing_and_the_chain_reaches_it(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    chain.kick_stream(rt, stream_id)
    (args,) = queued_chunk_tasks(worker_app)
    claim = chain.claim_stream(rt, stream_id, args[2], chain.worker_id())
    # when ingest submits chunk 3 while the chain holds chunk 0
    images, stamps = chunk_frames(1, 1)[0]
    submit_chunk(rt, stream_id=stream_id, seq=3, t_start=6.0, t_end=8.0, images=images, timestamps=stamps)
    # then no second task is queued; once chunk 0 is applied the chain's release queues chunk 1 only
    assert queued_chunk_tasks(worker_app) == []
    assert services.apply_chunk(rt, stream_id, claim.seq) == "applied"
    assert chain.release_stream(rt, stream_id, claim.token, chain.worker_id()) == "chunk 1 queued"
    assert queued_chunk_tasks(worker_app) == [[stream_id, 1, claim.token + 1]]


def test_claim_stream_when_a_live_worker_runs_the_chain_refuses_then_takes_over_once_it_is_dead(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    with session_scope(rt.sessions) as session:
        repo.beat_worker(session, worker_id="a" * 32, hostname="elsewhere", pid=1, queues=CHUNK_QUEUE)
    first = chain.claim_stream(rt, stream_id, None, "a" * 32)
    # when another delivery arrives while worker a is alive, then it is refused by name
    refused = chain.claim_stream(rt, stream_id, None, "b" * 32)
    assert isinstance(first, chain.Claim) and refused == f"chain of stream {stream_id} running on worker {'a' * 32}"
    # when worker a stops beating, then the recovery check queues the chain again with a new token
    with session_scope(rt.sessions) as session:
        repo.forget_workers(session, worker_ids=["a" * 32])
    found = chain.recover_lost_work(rt)
    assert found == chain.Recovered(chains=1)
    assert queued_chunk_tasks(worker_app) == [[stream_id, 0, first.token + 1]]
    # and the old holder's release changes nothing
    assert chain.release_stream(rt, stream_id, first.token, "a" * 32) == "superseded"
    assert _deliver(worker_app, stream_id, 0, first.token + 1) == "applied"
    assert attempts_of(rt, stream_id)[0] == 2


def test_recover_when_a_queued_chain_lost_its_task_queues_it_again_with_the_same_token(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    chain.kick_stream(rt, stream_id)
    assert queued_chunk_tasks(worker_app) == [[stream_id, 0, 1]]  # taken by a worker killed before it claimed
    # when vidmem serve restarts its worker, then the chain's task is queued again at once
    assert recover_unfinished(rt) == (0, 0)
    assert queued_chunk_tasks(worker_app) == [[stream_id, 0, 1]]
    # and the workers' recovery check does so once the queued lease expired
    assert chain.recover_lost_work(rt) == chain.Recovered()
    with session_scope(rt.sessions) as session:
        session.get(StreamLease, stream_id).expires_at = utcnow() - timedelta(seconds=1)
    assert chain.recover_lost_work(rt) == chain.Recovered(chains=1)
    assert queued_chunk_tasks(worker_app) == [[stream_id, 0, 1]]
    assert _deliver(worker_app, stream_id, 0, 1) == "applied"


def test_chunk_delivered_max_attempts_times_fails_with_reason_and_the_stream_goes_on(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    with session_scope(rt.sessions) as session:
        repo.get_chunk(session, stream_id=stream_id, seq=0).attempts = rt.settings.max_attempts
    # when the chain runs, then chunk 0 fails as a recorded gap and chunk 1 is applied
    assert _deliver(worker_app, stream_id, 0) == "applied"
    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=0)
        assert chunk.status == "failed" and "chunk killed its worker 3 times" in chunk.error
        assert repo.get_chunk(session, stream_id=stream_id, seq=1).status == "applied"
    assert rt.memory_store.load(stream_id).last_seq == 1
    assert chain.memory_invariant_problems(rt, stream_id) == []


def test_apply_chunk_when_a_dropped_chunk_is_behind_the_memory_keeps_it_a_gap(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=0)
        chunk.status, chunk.error = "dropped", "dropped: workers fell behind"
    assert services.apply_chunk(rt, stream_id, 1) == "applied"
    # when the dropped chunk is delivered late, then it is not relabelled applied (the memory lacks it)
    assert services.apply_chunk(rt, stream_id, 0) == "chunk behind the memory"
    with session_scope(rt.sessions) as session:
        assert repo.get_chunk(session, stream_id=stream_id, seq=0).status == "dropped"
    assert chain.memory_invariant_problems(rt, stream_id) == []


def test_apply_chunk_when_a_pending_chunk_is_behind_the_memory_records_it_as_a_gap(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    with session_scope(rt.sessions) as session:
        repo.get_chunk(session, stream_id=stream_id, seq=0).status = "dropped"
    services.apply_chunk(rt, stream_id, 1)
    with session_scope(rt.sessions) as session:  # chunk 0 pending again: its row arrived after chunk 1's
        repo.get_chunk(session, stream_id=stream_id, seq=0).status = "pending"

    assert services.apply_chunk(rt, stream_id, 0) == "chunk behind the memory"

    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=0)
        assert (chunk.status, chunk.error) == ("dropped", "dropped: later chunks were applied first")
    assert rt.memory_store.load(stream_id).version == 1
    assert chain.memory_invariant_problems(rt, stream_id) == []


def test_apply_chunk_when_the_memory_holds_a_chunk_whose_row_was_dropped_marks_it_applied(worker_app, stream_id):
    # given chunk 0 saved to the memory by a worker that died before its row, then dropped by backpressure
    rt = worker_app.vidmem_runtime
    services.apply_chunk(rt, stream_id, 0)
    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=0)
        chunk.status, chunk.error = "dropped", "dropped: workers fell behind"
    assert chain.memory_invariant_problems(rt, stream_id) != []
    # when the chain applies chunk 1, then chunk 0's row says applied again and rows and memory agree
    assert services.apply_chunk(rt, stream_id, 1) == "applied"
    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=0)
        assert (chunk.status, chunk.error) == ("applied", None)
    assert chain.memory_invariant_problems(rt, stream_id) == []


def test_memory_invariant_problems_when_rows_and_memory_disagree_names_each(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    for seq in (0, 1):
        services.apply_chunk(rt, stream_id, seq)
    with session_scope(rt.sessions) as session:
        repo.get_chunk(session, stream_id=stream_id, seq=1).status = "pending"  # the row lost its apply
        repo.get_chunk(session, stream_id=stream_id, seq=2).status = "dropped"  # a gap without a reason

    problems = chain.memory_invariant_problems(rt, stream_id)

    assert problems == [
        "1 applied rows (+0 pruned) but memory version 2",
        "newest applied row is chunk 0 but memory's last_seq is 1",
        "chunks [1] still pending at or below last_seq 1",
        "gaps [2] without a recorded reason",
    ]


def test_answer_question_when_running_on_a_live_worker_leaves_it_and_when_dead_takes_it_over(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    with session_scope(rt.sessions) as session:
        question = repo.create_question(session, stream_id=stream_id, text="What is there?")
        question.status, question.worker_id, question.attempts = "running", "a" * 32, 1
        repo.beat_worker(session, worker_id="a" * 32, hostname="elsewhere", pid=1, queues=QUESTION_QUEUE)
        question_id = question.id
    assert services.answer_question(rt, question_id) == f"question running on worker {'a' * 32}"
    # when worker a's last beat is older than worker_dead_after_s, then this worker answers it
    with session_scope(rt.sessions) as session:
        session.get(WorkerBeat, "a" * 32).beat_at = utcnow() - timedelta(seconds=rt.settings.worker_dead_after_s + 1)
    assert services.answer_question(rt, question_id) == "no video yet"
    with session_scope(rt.sessions) as session:
        answered = repo.get_question(session, question_id)
        assert (answered.status, answered.attempts, answered.worker_id) == ("done", 2, chain.worker_id())


def test_answer_question_delivered_max_attempts_times_fails_with_reason(worker_app, stream_id):
    rt = worker_app.vidmem_runtime
    with session_scope(rt.sessions) as session:
        question = repo.create_question(session, stream_id=stream_id, text="What is there?")
        question.status, question.worker_id, question.attempts = "running", "c" * 32, 3
        question_id = question.id
    # when the recovery check finds it on a worker that never beat, then it is queued again
    assert chain.recover_lost_work(rt).questions == 1
    # and its next delivery fails it with the reason, without answering
    outcome = worker_app.tasks["vidmem.questions.answer"].apply(args=(question_id,)).get()
    with session_scope(rt.sessions) as session:
        failed = repo.get_question(session, question_id)
    assert outcome == "failed: killed its workers"
    assert failed.status == "failed" and failed.answer is None
    assert failed.error.startswith("question killed its worker 3 times") and "VIDMEM_MAX_ATTEMPTS" in failed.error


def test_parse_queues_when_names_are_short_or_full_gives_queue_names():
    assert parse_queues("chunks,questions") == [CHUNK_QUEUE, QUESTION_QUEUE]
    assert parse_queues(f" questions , {QUESTION_QUEUE}") == [QUESTION_QUEUE]
    assert parse_queues("alerts,chunks") == [ALERT_QUEUE, CHUNK_QUEUE]
    with pytest.raises(ValueError, match="unknown queues"):
        parse_queues("alarms")


def test_worker_argv_when_concurrency_is_above_one_uses_threads_on_the_given_queues(settings):
    solo = worker_argv(settings, queues=[QUESTION_QUEUE])
    threads = worker_argv(settings.model_copy(update={"worker_concurrency": 4}))

    assert "--pool=solo" in solo and "--concurrency=1" in solo and f"--queues={QUESTION_QUEUE}" in solo
    assert "--pool=threads" in threads and "--concurrency=4" in threads
    assert f"--queues={CHUNK_QUEUE},{QUESTION_QUEUE},{ALERT_QUEUE}" in threads, "the default takes every queue"


def test_worker_command_when_queue_is_unknown_exits_2_naming_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDMEM_DATA_DIR", str(tmp_path / "data"))

    result = CliRunner().invoke(cli, ["worker", "--queues", "chunks,alarms"])

    assert result.exit_code == 2
    assert "unknown queues ['alarms']" in result.output and "questions" in result.output
    assert not (tmp_path / "data").exists(), "nothing started"


@pytest.mark.timeout(240)
def test_three_streams_on_two_workers_each_memory_equals_the_one_built_in_order(settings, postgres_url, tmp_path):
    db.upgrade(postgres_url)
    with private_redis(tmp_path / "redis") as redis_url:
        _three_streams_on_two_workers(settings.model_copy(update={
            "database_url": postgres_url, "broker_url": redis_url, **FAST_RECOVERY}), tmp_path)


def _three_streams_on_two_workers(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings.ensure_dirs()
    rt = Runtime(settings, role="ingest")
    create_celery(settings)
    chunks = {name: chunk_frames(seed, 6) for seed, name in enumerate(("a", "b", "c"))}
    procs = start_workers(settings, tmp_path, 2)
    try:
        with session_scope(rt.sessions) as session:
            ids = {name: repo.create_stream(session, name=name, source_url=f"rtsp://127.0.0.1/{name}").id
                   for name in chunks}
        wait_ready(tmp_path, procs)  # both consume before work arrives: a worker ready first took all 18 tasks once
        # when the chunks of three streams are submitted interleaved, as three ingest threads would
        for seq in range(6):
            for name, stream_chunks in chunks.items():
                images, stamps = stream_chunks[seq]
                submit_chunk(rt, stream_id=ids[name], seq=seq, t_start=2.0 * seq, t_end=2.0 * seq + 2,
                             images=images, timestamps=stamps)
        wait_for(lambda: all_settled(rt, list(ids.values())), 120)
        with session_scope(rt.sessions) as session:
            beating = {w.pid for w in repo.list_workers(session)}
        assert beating == {p.pid for p in procs}, "each worker has a heartbeat row"
        assert {os.getpriority(os.PRIO_PROCESS, p.pid) for p in procs} == {settings.worker_nice}, (
            "workers run below the API and ingest on a shared machine")
    finally:
        stop_workers(procs)
    with session_scope(rt.sessions) as session:
        assert repo.list_workers(session) == [], "a worker stopped cleanly deletes its heartbeat row"
    # then every stream's memory equals the one built in order by one process, rows and memory agree
    for seed, (name, stream_chunks) in enumerate(chunks.items()):
        want = reference_memory(make_settings(tmp_path / f"ref{seed}"), stream_chunks)
        assert_same_memory(services.StreamMemory.load(rt, ids[name]).memory, want)
        assert chain.memory_invariant_problems(rt, ids[name]) == []
        assert attempts_of(rt, ids[name]) == dict.fromkeys(range(6), 1), "each chunk delivered once"
    # and no task was retried or delivered for nothing: 18 chunk tasks ran, spread over both workers
    logs = [log_of(tmp_path, i) for i in range(2)]
    runs = [len(re.findall(r"vidmem\.chunks\.process\[[^\]]+\] succeeded in [\d.]+s: 'applied'", log))
            for log in logs]
    assert sum(runs) == 18 and min(runs) > 0, runs
    assert not any("Retry in" in log or "stale delivery" in log for log in logs)
