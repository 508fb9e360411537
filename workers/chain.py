"""Per-stream order by design, and recovery of what dead workers held.

Every stream has at most one *chain*: a single chunk task on the queue or running, recorded in
its lease row (``stream_leases``). The worker that applies chunk n puts the task for the stream's
next pending chunk on the queue when it is done; a submitted chunk starts a chain only when none
is active. So no task ever waits for a predecessor, and the chains of several streams spread over
all workers (each one back at the tail of the queue after every chunk, so streams take turns).

Every task carries the lease's ``token``; a task whose token is no longer the lease's is a
duplicate or stale delivery (e.g. the broker redelivering a message after its visibility
timeout) and does nothing. The memory's compare-and-set keeps a chunk applied at most once
even when two workers race after a takeover.

Recovery (``recover_lost_work``) runs in every worker, every ``recovery_check_s``: a question
``running`` on a worker that stopped beating is queued again, a chain whose holder stopped
beating (or whose lease expired) is queued again with a new token, and a stream with pending
chunks but no chain gets one. A chunk or question delivered ``max_attempts`` times without
finishing (it killed its workers) fails with that reason the next time it is claimed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import current_app
from sqlalchemy import update
from sqlalchemy.orm import Session

from store import repo
from store.db import session_scope
from store.models import ChunkStatus, LeaseState, Question, QuestionStatus, Stream, StreamLease, utcnow
from workers.runtime import Runtime

log = logging.getLogger(__name__)

CHUNK_TASK = "vidmem.chunks.process"
QUESTION_TASK = "vidmem.questions.answer"
LEASE_GRACE_S = 30.0  # a running lease is trusted this long beyond the task time limit
# A queued lease whose task has not arrived by then is queued again with the same token (the task was
# lost with a worker killed between taking and claiming it, or with the broker): the first of the two
# deliveries runs the chain, the other is stale. A long backlog only costs a stale duplicate a minute.
QUEUED_TTL_S = 60.0
FORGET_DEAD_AFTER_S = 3600.0  # heartbeat rows of dead workers are deleted after this

_WORKER_ID = uuid.uuid4().hex


def worker_id() -> str:
    """This process's worker id: the holder recorded on the work it takes."""
    return _WORKER_ID


def killed_reason(kind: str, attempts: int) -> str:
    return (f"{kind} killed its worker {attempts} times (delivered {attempts} times without finishing); "
            f"not tried again (VIDMEM_MAX_ATTEMPTS)")


def live_workers(session: Session, rt: Runtime, now: datetime | None = None) -> set[str]:
    """Workers that beat within ``worker_dead_after_s``, plus this process."""
    since = (now or utcnow()) - timedelta(seconds=rt.settings.worker_dead_after_s)
    return repo.live_worker_ids(session, since=since) | {worker_id()}


def publish_chunk(stream_id: str, seq: int, token: int) -> None:
    current_app.send_task(CHUNK_TASK, args=[stream_id, seq, token])


def publish_question(question_id: str) -> None:
    current_app.send_task(QUESTION_TASK, args=[question_id])


def _queue_next(rt: Runtime, session: Session, lease: StreamLease, now: datetime) -> int | None:
    """Put the task for the stream's next pending chunk on the queue; None (lease idle) when there is none.

    Called holding the lease's lock, before the commit: a publish that fails rolls the lease back;
    a worker that receives the task before the commit waits for the lock and then sees the token.
    """
    head = repo.first_pending_chunk(session, stream_id=lease.stream_id)
    if head is None:
        lease.state, lease.holder, lease.expires_at = LeaseState.idle, None, None
        return None
    lease.token += 1
    lease.state, lease.holder, lease.expires_at = LeaseState.queued, None, now + timedelta(seconds=QUEUED_TTL_S)
    session.flush()
    publish_chunk(lease.stream_id, head.seq, lease.token)
    return head.seq


def kick_stream(rt: Runtime, stream_id: str) -> bool:
    """Start the stream's chain unless one is active; True when a task was queued."""
    with session_scope(rt.sessions) as session:
        lease = repo.lock_lease(session, stream_id=stream_id)
        if lease.state != LeaseState.idle:
            return False
        return _queue_next(rt, session, lease, utcnow()) is not None


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a stream's chain: apply chunk ``seq``, then release with ``token``."""

    seq: int
    token: int


def claim_stream(rt: Runtime, stream_id: str, token: int | None, holder: str) -> Claim | str:
    """Take the stream's chain for one chunk, or say why this delivery has nothing to do.

    ``token`` None (a task queued by an older vidmem, or run by hand) takes the chain unless a
    live worker runs it. The claimed chunk's ``attempts`` grows; a chunk already delivered
    ``max_attempts`` times fails instead (it killed its workers) and the next one is claimed.
    """
    now = utcnow()
    with session_scope(rt.sessions) as session:
        if session.get(Stream, stream_id) is None:
            return f"stream {stream_id} no longer exists"
        lease = repo.lock_lease(session, stream_id=stream_id)
        if token is not None and lease.token != token:
            return f"stale delivery (token {token}, lease at {lease.token})"
        if lease.state == LeaseState.running and lease.holder in live_workers(session, rt, now) \
                and not _expired(lease, now):  # a duplicate delivery (on this process's other thread, too)
            return f"chain of stream {stream_id} running on worker {lease.holder}"
        head = _claimable_head(rt, session, stream_id, now)
        if head is None:
            lease.state, lease.holder, lease.expires_at = LeaseState.idle, None, None
            return "no pending chunk"
        head.attempts += 1
        if token is None:
            lease.token += 1
        limit = rt.settings.task_time_limit_s + LEASE_GRACE_S
        lease.state, lease.holder, lease.expires_at = LeaseState.running, holder, now + timedelta(seconds=limit)
        return Claim(head.seq, lease.token)


def _claimable_head(rt: Runtime, session: Session, stream_id: str, now: datetime):  # type: ignore[no-untyped-def]
    limit = rt.settings.max_attempts
    while (head := repo.first_pending_chunk(session, stream_id=stream_id)) is not None and head.attempts >= limit:
        log.error("stream %s chunk %d failed: delivered %d times without finishing", stream_id, head.seq,
                  head.attempts)
        head.status, head.error, head.applied_at = ChunkStatus.failed, killed_reason("chunk", head.attempts), now
        session.flush()
    return head


def _expired(lease: StreamLease, now: datetime) -> bool:
    return lease.expires_at is not None and lease.expires_at < now


def release_stream(rt: Runtime, stream_id: str, token: int, holder: str) -> str:
    """Hand the chain on: queue the stream's next pending chunk, or leave the lease idle."""
    try:
        with session_scope(rt.sessions) as session:
            lease = repo.lock_lease(session, stream_id=stream_id)
            if lease.token != token or lease.holder != holder:
                return "superseded"  # the recovery check gave the chain to another worker meanwhile
            seq = _queue_next(rt, session, lease, utcnow())
            return "idle" if seq is None else f"chunk {seq} queued"
    except Exception:
        log.exception("stream %s: next chunk not queued; the recovery check will", stream_id)
        with contextlib.suppress(Exception), session_scope(rt.sessions) as session:
            session.execute(
                update(StreamLease).where(StreamLease.stream_id == stream_id, StreamLease.token == token)
                .values(state=LeaseState.idle, holder=None, expires_at=None)
            )
        return "release failed"


@dataclass(frozen=True)
class Recovered:
    questions: int = 0
    chains: int = 0
    started: int = 0


def recover_lost_work(rt: Runtime) -> Recovered:
    """Re-queue what dead workers held and start chains that are missing (run by every worker)."""
    now = utcnow()
    with session_scope(rt.sessions) as session:
        live = live_workers(session, rt, now)
        questions = [(q.id, q.worker_id, q.attempts) for q in repo.running_questions(session)
                     if q.worker_id not in live]
        chains = [lease.stream_id for lease in repo.busy_leases(session) if _lost(lease, live, now)]
        missing = repo.streams_without_chain(session)
        forgotten = now - timedelta(seconds=max(FORGET_DEAD_AFTER_S, rt.settings.worker_dead_after_s))
        repo.forget_workers(session, beat_before=forgotten)
    found = Recovered(
        questions=sum(_requeue_question(rt, *q) for q in questions),
        chains=sum(_requeue_chain(rt, stream_id) for stream_id in chains),
        started=sum(kick_stream(rt, stream_id) for stream_id in missing),
    )
    if found != Recovered():
        log.warning("recovered lost work: %s", found)
    return found


def _lost(lease: StreamLease, live: set[str], now: datetime) -> bool:
    dead_holder = lease.state == LeaseState.running and lease.holder not in live
    return dead_holder or _expired(lease, now)


def _requeue_question(rt: Runtime, question_id: str, holder: str | None, attempts: int) -> bool:
    """Queue a question again if it is still running on the same dead worker (one worker wins)."""
    with session_scope(rt.sessions) as session:
        done = session.execute(
            update(Question)
            .where(Question.id == question_id, Question.status == QuestionStatus.running,
                   Question.attempts == attempts,
                   Question.worker_id.is_(None) if holder is None else Question.worker_id == holder)
            .values(status=QuestionStatus.queued, worker_id=None)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return False
        publish_question(question_id)  # before the commit: a failed publish leaves it for the next check
    log.warning("question %s re-queued: its worker %s stopped beating", question_id, holder)
    return True


def _requeue_chain(rt: Runtime, stream_id: str) -> bool:
    now = utcnow()
    with session_scope(rt.sessions) as session:
        lease = repo.lock_lease(session, stream_id=stream_id)
        if lease.state == LeaseState.idle or not _lost(lease, live_workers(session, rt, now), now):
            return False
        if lease.state == LeaseState.queued:  # its task was lost: the same token again (duplicates are harmless)
            head = repo.first_pending_chunk(session, stream_id=stream_id)
            if head is not None:
                lease.expires_at = now + timedelta(seconds=QUEUED_TTL_S)
                publish_chunk(stream_id, head.seq, lease.token)
                return True
        holder = lease.holder
        seq = _queue_next(rt, session, lease, now)
    log.warning("stream %s: chain of dead or stalled worker %s re-queued at chunk %s", stream_id, holder, seq)
    return seq is not None


def requeue_queued_chains(rt: Runtime) -> int:
    """Queue the task of every queued chain again, same token (after a restart the file broker may have lost it)."""
    with session_scope(rt.sessions) as session:
        queued = [lease.stream_id for lease in repo.busy_leases(session) if lease.state == LeaseState.queued]
    count = 0
    for stream_id in queued:
        with session_scope(rt.sessions) as session:
            lease = repo.lock_lease(session, stream_id=stream_id)
            head = repo.first_pending_chunk(session, stream_id=stream_id)
            if lease.state == LeaseState.queued and head is not None:
                publish_chunk(stream_id, head.seq, lease.token)
                count += 1
    return count


def reap_local_dead_workers(rt: Runtime) -> list[str]:
    """Forget heartbeat rows of workers of this host whose process is gone (no need to wait for them to age).

    Used by ``vidmem serve``, which shares the host and pid namespace with the worker it restarts.
    """
    host = socket.gethostname()
    with session_scope(rt.sessions) as session:
        gone = [w.id for w in repo.list_workers(session) if w.hostname == host and not _pid_alive(w.pid)]
        if gone:
            repo.forget_workers(session, worker_ids=gone)
    return gone


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def memory_invariant_problems(rt: Runtime, stream_id: str) -> list[str]:
    """What breaks "applied rows = chunks in memory, in order, with gaps recorded"; empty when it holds.

    The memory's version counts the chunks applied to it and ``last_seq`` names the last one, so:
    applied rows (plus those pruned) equal the version, the newest applied row is ``last_seq``,
    no chunk at or below it is still pending, every skipped one (dropped, failed) says why, and
    the applied rows were applied in seq order.
    """
    record = rt.memory_store.load(stream_id)
    version, last_seq = (record.version, record.last_seq) if record else (0, -1)
    with session_scope(rt.sessions) as session:
        chunks = sorted(repo.list_chunks(session, stream_id=stream_id), key=lambda c: c.seq)
        pruned = int((repo.get_stream(session, stream_id).stats.get("chunks_pruned") or {}).get("applied", 0))
    applied = [c for c in chunks if c.status == ChunkStatus.applied]
    problems = []
    if len(applied) + pruned != version:
        problems.append(f"{len(applied)} applied rows (+{pruned} pruned) but memory version {version}")
    if applied and applied[-1].seq != last_seq:
        problems.append(f"newest applied row is chunk {applied[-1].seq} but memory's last_seq is {last_seq}")
    behind = [c.seq for c in chunks if c.seq <= last_seq and c.status == ChunkStatus.pending]
    if behind:
        problems.append(f"chunks {behind} still pending at or below last_seq {last_seq}")
    silent = [c.seq for c in chunks if c.status in (ChunkStatus.dropped, ChunkStatus.failed) and not c.error]
    if silent:
        problems.append(f"gaps {silent} without a recorded reason")
    times = [c.applied_at for c in applied]
    if any(a is None or b is None or b < a for a, b in zip(times, times[1:], strict=False)):
        problems.append(f"applied out of order: {[(c.seq, c.applied_at) for c in applied]}")
    return problems
