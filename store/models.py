"""SQLAlchemy 2 tables. API schemas live apart, in ``api/schemas.py``.

Every schema change goes through an Alembic migration in ``migrations/versions``; a test checks
that autogenerate finds nothing pending.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


DEFAULT_TENANT = "default"
"""The tenant of rows made without a key: the open loopback mode and rows from before tenants."""


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every database; SQLite forgets the zone, so reads restore UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime}


class StreamStatus(enum.StrEnum):
    connecting = "connecting"
    live = "live"
    reconnecting = "reconnecting"
    ended = "ended"
    failed = "failed"
    stopped = "stopped"


class QuestionStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class ChunkStatus(enum.StrEnum):
    pending = "pending"
    applied = "applied"
    dropped = "dropped"
    failed = "failed"


class Stream(Base):
    __tablename__ = "streams"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # The tenant (an API key's owner) the stream belongs to; other tenants get 404 for it.
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, index=True)
    name: Mapped[str] = mapped_column(String(200))
    # The URL with credentials redacted (``rtsp://***@cam/x``); safe to show.
    source_url: Mapped[str] = mapped_column(Text)
    # The full URL, Fernet-encrypted, when it carries credentials (store.credentials); None otherwise.
    source_secret: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[str] = mapped_column(String(20), default=StreamStatus.connecting)
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    active: Mapped[bool] = mapped_column(default=True)
    loop: Mapped[bool] = mapped_column(default=False)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The wall-clock time of stream second 0 (set by ingest when media starts), so clock times map to
    # stream seconds; None until the first frame.
    media_epoch: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    questions: Mapped[list[Question]] = relationship(back_populates="stream", cascade="all, delete-orphan")


class Question(Base):
    __tablename__ = "questions"
    __table_args__ = (Index("ix_questions_stream_created", "stream_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"))
    # Copied from the stream so history across streams filters on one indexed column.
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, index=True)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=QuestionStatus.queued)
    window_start: Mapped[float | None] = mapped_column(Float, default=None)
    window_end: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    answer: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    visual_tokens_before: Mapped[int | None] = mapped_column(Integer, default=None)
    visual_tokens_after: Mapped[int | None] = mapped_column(Integer, default=None)
    model: Mapped[str | None] = mapped_column(String(300), default=None)
    method: Mapped[str | None] = mapped_column(String(300), default=None)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The worker (``workers.id``) that holds it while ``running``: a dead holder's question is re-queued.
    worker_id: Mapped[str | None] = mapped_column(String(32), default=None)

    stream: Mapped[Stream] = relationship(back_populates="questions")


class ChunkRecord(Base):
    """One chunk of a stream: where its frames are and what happened to it."""

    __tablename__ = "chunks"
    # by status: the workers' recovery check and housekeeping look for pending chunks every few seconds
    __table_args__ = (UniqueConstraint("stream_id", "seq", name="uq_chunks_stream_seq"),
                      Index("ix_chunks_status", "status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    t_start: Mapped[float] = mapped_column(Float)
    t_end: Mapped[float] = mapped_column(Float)
    num_frames: Mapped[int] = mapped_column(Integer)
    blob_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=ChunkStatus.pending)
    tokens_in: Mapped[int | None] = mapped_column(Integer, default=None)
    tokens_out: Mapped[int | None] = mapped_column(Integer, default=None)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Deliveries to a worker; one that reached ``max_attempts`` killed its workers that often and fails.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class LeaseState(enum.StrEnum):
    idle = "idle"  # no chain: the next submitted chunk starts one
    queued = "queued"  # a task for the stream is on the queue
    running = "running"  # a worker (``holder``) applies the stream's next chunk


class StreamLease(Base):
    """At most one chain of chunk tasks per stream: per-stream order without polling.

    ``token`` grows with every task put on the queue; a task whose token is no longer the
    lease's is a duplicate or stale delivery and does nothing. ``expires_at`` bounds how long a
    queued or running lease is trusted before the workers' recovery check queues it again.
    """

    __tablename__ = "stream_leases"

    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    token: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(20), default=LeaseState.idle)
    holder: Mapped[str | None] = mapped_column(String(32), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WorkerBeat(Base):
    """A live worker process: a thread refreshes ``beat_at``; a worker that stops beating is dead."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
