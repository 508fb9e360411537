"""After a Redis restart, settle what Redis lost so that streams continue, with the loss recorded as a gap.

In distributed mode Redis holds the broker's queues, the frame blobs and the streams' memory;
with persistence off none of it survives a restart. The database does:

- a chunk row still ``pending`` whose frames are gone can never be applied: it is marked
  ``failed`` with the reason and counted in the stream's ``chunks_lost`` (reason ``redis_restart``);
- a stream whose chain (``workers.chain``) was ``queued`` lost that task with the queue: the
  chain is started again (a task that survived after all is a stale delivery and does nothing);
  a chain ``running`` on a live worker goes on, one on a dead worker is the recovery check's;
- a question still ``queued`` lost its task: it is queued again (the first delivery claims it);
- a stream whose memory vanished starts a new memory at its next chunk; counted as
  ``memory_reset`` (the memory's version no longer covers the applied rows).

The ingest manager calls ``due()`` every tick; a restart is seen as a new Redis ``run_id`` (of the
store's Redis or, when it is another server, the broker's).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.exceptions import RedisError
from sqlalchemy import func, select, update

from store import repo
from store.db import session_scope
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
        counts = {"failed": 0, "chains": 0, "questions": 0, "memory_reset": 0}
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
        for stream_id, token in queued:
            counts["chains"] += self._restart_chain(stream_id, token)
        for question_id in questions:
            chain.publish_question(question_id)
            counts["questions"] += 1
        for stream_id, rows in applied.items():
            size = self.runtime.memory_store.size(stream_id)
            if size is None or size.version < rows:  # each applied chunk raised the version by one
                log.error("stream %s: its memory was lost with Redis; a new one starts at the next chunk", stream_id)
                self.runtime.chunk_losses.record(stream_id, "memory_reset")
                counts["memory_reset"] += 1
        log.warning("after the Redis restart: %s", counts)
        return counts

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
