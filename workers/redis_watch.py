"""After a Redis restart, settle what Redis lost so that streams continue, with the loss recorded as a gap.

In distributed mode Redis holds the broker's queues, the frame blobs and the streams' memory;
with persistence off none of it survives a restart. The database does:

- a chunk row still ``pending`` whose frames are gone can never be applied: it is marked
  ``failed`` with the reason and counted in the stream's ``chunks_lost`` (reason ``redis_restart``);
- a stream whose chain (``workers.chain``) was ``queued`` lost that task with the queue: the
  chain is started again (a task that survived after all is a stale delivery and does nothing);
  a chain ``running`` on a live worker goes on, one on a dead worker is the recovery check's;
- a question still ``queued`` lost its task: it is queued again (the first delivery claims it);
- a stream whose memory vanished is restored from its snapshot in the database (``store.snapshots``,
  written every ``snapshot_every`` chunks); the chunks applied after the snapshot are failed with
  the reason and counted in ``chunks_lost`` as ``memory_rollback`` (with a snapshot every chunk
  there are none). A stream without a snapshot starts a new memory at its next chunk, counted
  as ``memory_reset`` (the memory's version no longer covers the applied rows).

A worker that finds a memory missing restores it the same way (:func:`restore_memory`), so a chunk
or question that runs before ingest has settled sees the restored memory, never an empty one.

The ingest manager calls ``due()`` every tick; a restart is seen as a new Redis ``run_id`` (of the
store's Redis or, when it is another server, the broker's).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.exceptions import RedisError
from sqlalchemy import func, select, update

from store import repo, snapshots
from store.db import session_scope
from store.memory_store import MemoryRecord, RedisMemoryStore
from store.models import ChunkRecord, ChunkStatus, LeaseState, QuestionStatus, StreamLease
from workers import chain
from workers.runtime import Runtime

log = logging.getLogger(__name__)

FRAMES_LOST = "frames lost: Redis restarted and did not keep them (persistence off)"


class RedisWatch:
    """Watches the store's Redis and, when it is another server, the broker's."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.run_id: str | None = None
        self._clients: list[Any] | None = None

    def clients(self) -> list[Any]:
        if self._clients is None:
            settings, store = self.runtime.settings, self.runtime.redis
            self._clients = [store] if store is not None else []
            if settings.broker_url.startswith("redis") and settings.broker_url != settings.store_redis_url:
                self._clients.append(redis.Redis.from_url(settings.broker_url))
        return self._clients

    def due(self) -> bool:
        """True when a Redis restart was seen (and settled) now; Redis unreachable: nothing to do yet."""
        if not self.clients():
            return False
        try:
            run_id = "/".join(str(client.info("server")["run_id"]) for client in self.clients())
        except RedisError:
            return False
        previous = self.run_id
        if previous is not None and previous != run_id:
            log.warning("Redis restarted (run id %s -> %s): settling what it lost", previous, run_id)
            self.settle()  # raises if Redis or the database fail meanwhile: tried again at the next tick
        self.run_id = run_id
        return previous is not None and previous != run_id

    def settle(self) -> dict[str, int]:
        """Fail pending chunks whose frames are gone, restart lost chains and questions, count lost memories."""
        counts = {"failed": 0, "chains": 0, "questions": 0, "memory_restored": 0, "memory_reset": 0}
        with session_scope(self.runtime.sessions) as session:
            pending = [(c.stream_id, c.seq, c.blob_key) for s in repo.list_streams(session)
                       for c in repo.pending_chunks(session, stream_id=s.id)]
            queued = [(lease.stream_id, lease.token) for lease in repo.busy_leases(session)
                      if lease.state == LeaseState.queued]
            questions = [q.id for q in repo.unfinished_questions(session) if q.status == QuestionStatus.queued]
            applied = dict(session.execute(
                select(ChunkRecord.stream_id, func.count()).where(ChunkRecord.status == ChunkStatus.applied)
                .group_by(ChunkRecord.stream_id)).all())
        for stream_id, seq, blob_key in pending:
            if self.runtime.blobs.get(blob_key) is None:
                counts["failed"] += self._fail(stream_id, seq)
        for stream_id, rows in applied.items():  # memories first: the chains restarted below build on them
            outcome = self._settle_memory(stream_id, rows)
            if outcome:
                counts[outcome] += 1
        for stream_id, token in queued:
            counts["chains"] += self._restart_chain(stream_id, token)
        for question_id in questions:
            chain.publish_question(question_id)
            counts["questions"] += 1
        log.warning("after the Redis restart: %s", counts)
        return counts

    def _settle_memory(self, stream_id: str, rows: int) -> str | None:
        """Restore a memory Redis lost from its snapshot (``memory_restored``), else count ``memory_reset``."""
        rt = self.runtime
        size = rt.memory_store.size(stream_id)
        if size is not None and size.version >= rows:  # each applied chunk raised the version by one
            return None
        if size is None and snapshots_enabled(rt):
            restored = snapshots.restore(rt.sessions, rt.memory_store, stream_id)
            if restored is not None or rt.memory_store.size(stream_id) is not None:  # a worker may have won
                lost = restored.lost if restored else []
                log.warning("stream %s: memory restored from its snapshot; chunks %s applied after it lost",
                            stream_id, lost)
                for _ in lost:
                    rt.chunk_losses.record(stream_id, "memory_rollback")
                return "memory_restored"
        log.error("stream %s: its memory was lost with Redis; a new one starts at the next chunk", stream_id)
        rt.chunk_losses.record(stream_id, "memory_reset")
        return "memory_reset"

    def _restart_chain(self, stream_id: str, token: int) -> int:
        """A chain queued before the restart lost its task: idle it (if still so) and start it again."""
        with session_scope(self.runtime.sessions) as session:
            reset = session.execute(
                update(StreamLease)
                .where(StreamLease.stream_id == stream_id, StreamLease.token == token,
                       StreamLease.state == LeaseState.queued)
                .values(state=LeaseState.idle, holder=None, expires_at=None)
            ).rowcount
        chain.kick_stream(self.runtime, stream_id)  # nothing pending now: the next submitted chunk starts it
        return int(reset)

    def _fail(self, stream_id: str, seq: int) -> int:
        with session_scope(self.runtime.sessions) as session:
            done = session.execute(
                update(ChunkRecord)
                .where(ChunkRecord.stream_id == stream_id, ChunkRecord.seq == seq,
                       ChunkRecord.status == ChunkStatus.pending)
                .values(status=ChunkStatus.failed, error=FRAMES_LOST)
            ).rowcount
        if done:
            self.runtime.chunk_losses.record(stream_id, "redis_restart")
        return done


def snapshots_enabled(rt: Runtime) -> bool:
    """Snapshots are written, and restored, only where memories live in Redis (embedded: files on disk)."""
    return rt.settings.snapshot_every > 0 and isinstance(rt.memory_store, RedisMemoryStore)


def snapshot_due(rt: Runtime, record: MemoryRecord) -> MemoryRecord | None:
    """``record`` when the memory it holds is due for a snapshot (every ``snapshot_every`` versions), else None."""
    if snapshots_enabled(rt) and record.version % rt.settings.snapshot_every == 0:
        return record
    return None


def restore_memory(rt: Runtime, stream_id: str) -> MemoryRecord | None:
    """The stream's memory record, restored from its snapshot when the memory store lost it; None: none anywhere."""
    record = rt.memory_store.load(stream_id)
    if record is not None or not snapshots_enabled(rt):
        return record
    restored = snapshots.restore(rt.sessions, rt.memory_store, stream_id)
    if restored is None:  # no snapshot, or another process restored it (or started a memory) first
        return rt.memory_store.load(stream_id)
    log.warning("stream %s: memory missing from Redis, restored from its snapshot (version %d, chunk %d); "
                "chunks %s applied after it recorded as lost", stream_id, restored.record.version,
                restored.record.last_seq, restored.lost)
    return restored.record
