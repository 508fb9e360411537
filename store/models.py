"""SQLAlchemy 2 tables. API schemas live apart, in ``api/schemas.py``.

Every schema change goes through an Alembic migration in ``migrations/versions``; a test checks
that autogenerate finds nothing pending.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


DEFAULT_TENANT = "default"
"""The tenant of rows made without a key: the open loopback mode and rows from before tenants."""


def new_id() -> str:
    return uuid.uuid4().hex


class _SQLiteUTCDateTime(sqlite.DATETIME):
    """SQLite's DATETIME (text, no zone) read back as UTC in one step: a page of history reads 300 of them."""

    def result_processor(self, dialect: Any, coltype: object) -> Callable[[str | None], datetime | None]:
        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            try:  # every value is written as UTC without a zone: one parse, not a parse and a replace
                return datetime.fromisoformat(value + "+00:00")
            except ValueError:  # a zone after all (a hand-written row)
                return datetime.fromisoformat(value)

        return process


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every database: PostgreSQL keeps the zone (timestamptz); SQLite forgets
    it, and every value written is UTC, so its reads restore UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return _SQLiteUTCDateTime() if dialect.name == "sqlite" else super().load_dialect_impl(dialect)


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
    cancelled = "cancelled"  # cancelled while queued (POST /questions/{id}/cancel); a worker skips it


FINAL_QUESTION_STATUSES = frozenset({QuestionStatus.done, QuestionStatus.failed, QuestionStatus.cancelled})
"""A question in one of these changes no more (unless retried): long-polls and event streams end here."""


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
    # The stream's own settings (workers.stream_settings): sample_fps, chunk_seconds, stage1, stage2,
    # memory_budget, llm_budget; a key absent (or the column None) means the deployment's default.
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Set by DELETE /streams/{id}?history=keep: the stream is stopped and hidden from lists, its questions stay.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    questions: Mapped[list[Question]] = relationship(back_populates="stream", cascade="all, delete-orphan")


class Question(Base):
    __tablename__ = "questions"
    __table_args__ = (
        Index("ix_questions_stream_created", "stream_id", "created_at"),
        # history across a tenant's streams, newest first (cursor on created_at, id)
        Index("ix_questions_tenant_created", "tenant_id", "created_at"),
        # queue positions: queued questions in queue order
        Index("ix_questions_status_queued", "status", "queued_at"),
        # a stream's event feed polls the rows changed since its cursor
        Index("ix_questions_stream_updated", "stream_id", "updated_at"),
    )
    # Full-text search over text and answer is the database's own and lives outside these models
    # (migration 0005, ``store.history``): an FTS5 table kept by triggers on SQLite, a GIN index on PostgreSQL.

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
    # When it was (last) put on the queue: created_at, or the retry; queue positions count in this order.
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Every change of the row; event streams and long-polls look for rows changed since their cursor.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # A relative window ("the last N seconds"), resolved by the worker against the memory's newest time
    # into window_start/window_end when it answers.
    window_last: Mapped[float | None] = mapped_column(Float, default=None)
    # The stream time the answer actually saw (the window met with what the memory held); None before.
    covered_start: Mapped[float | None] = mapped_column(Float, default=None)
    covered_end: Mapped[float | None] = mapped_column(Float, default=None)
    # The stream's media epoch (wall-clock time of stream second 0) used for this question's clock times.
    media_epoch: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Overrides the caller asked for (None: the stream's or deployment's value).
    stage2: Mapped[str | None] = mapped_column(String(300), default=None)
    llm_budget: Mapped[int | None] = mapped_column(Integer, default=None)
    max_answer_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    # What the answer actually used: stage1, memory_budget, stage2, llm_budget, max_answer_tokens.
    specs: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Tokens the stream's memory held when the question was answered (visual_tokens_before: in its window).
    memory_tokens: Mapped[int | None] = mapped_column(Integer, default=None)

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


class ApiKey(Base):
    """An API key: its tenant and the SHA-256 digest of its secret, never the secret itself (``store.keys``).

    The id is public (it is part of the key and names it in ``vidmem keys list`` and ``revoke``); a
    revoked key stays, so that its id is never reused and the list shows when it was revoked.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class MemorySnapshot(Base):
    """The durable copy of a stream's memory in distributed mode (``store.snapshots``), one row per stream.

    Redis holds the live memory; without persistence a Redis restart loses it, and the workers restore
    it from here, so only the chunks after the copy are lost (a recorded gap). ``record`` is the memory
    store's own safetensors encoding (``store.memory_store.encode_record``), never a pickle.
    """

    __tablename__ = "memory_snapshots"

    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    last_seq: Mapped[int] = mapped_column(Integer)
    record: Mapped[bytes] = mapped_column(LargeBinary)
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Alert(Base):
    """A standing question on a stream, answered by a worker every ``every_s`` of stream time (``workers.alerts``).

    It fires when the model's likeliest option (``options``) is one of ``fire_on``; a yes/no question is the
    options ``["yes", "no"]`` firing on ``["yes"]``. The ``last_*`` columns are the worker's bookkeeping:
    ``last_eval_seq`` claims the chunk an evaluation was queued for (at most one per period),
    ``last_answered_seq`` the one answered (a redelivered task answers nothing twice).
    """

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), index=True)
    question: Mapped[str] = mapped_column(Text)
    options: Mapped[list[str]] = mapped_column(JSON)
    fire_on: Mapped[list[str]] = mapped_column(JSON)
    every_s: Mapped[float | None] = mapped_column(Float, default=None)  # None: every chunk
    window_s: Mapped[float] = mapped_column(Float)
    cooldown_s: Mapped[float] = mapped_column(Float, default=0.0)
    # Redacted for display; the full URL Fernet-encrypted when it carries credentials (store.credentials).
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_url_secret: Mapped[str | None] = mapped_column(Text, default=None)
    # The HMAC key of webhook signatures, Fernet-encrypted; shown once, in the response that created it.
    signing_secret: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_eval_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    last_eval_t: Mapped[float | None] = mapped_column(Float, default=None)
    last_answered_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    last_answer: Mapped[str | None] = mapped_column(Text, default=None)
    last_answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_fired_t: Mapped[float | None] = mapped_column(Float, default=None)


class AlertEvent(Base):
    """An alert that fired on one chunk: when (stream and wall-clock time), what the model answered, a thumbnail."""

    __tablename__ = "alert_events"
    __table_args__ = (
        UniqueConstraint("alert_id", "seq", name="uq_alert_events_alert_seq"),  # one event per chunk, redelivery too
        Index("ix_alert_events_alert_created", "alert_id", "created_at"),
        Index("ix_alert_events_stream_created", "stream_id", "created_at"),
        Index("ix_alert_events_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    t_start: Mapped[float] = mapped_column(Float)
    t_end: Mapped[float] = mapped_column(Float)
    wall_start: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)  # None: media_epoch unknown
    wall_end: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    answer: Mapped[str] = mapped_column(Text)
    scores: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)  # option -> log-likelihood
    # A small JPEG (a few KB) of the chunk's last frame; deferred so that lists never load it.
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary, default=None, deferred=True)
    has_thumbnail: Mapped[bool] = column_property(thumbnail.is_not(None))
    # The webhook's outcome: none (no webhook), pending (being tried), delivered, failed (attempts used up).
    delivery_status: Mapped[str] = mapped_column(String(20), default="none")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    deliveries: Mapped[list[AlertDelivery]] = relationship(
        back_populates="event", cascade="all, delete-orphan", order_by="AlertDelivery.attempt"
    )


class AlertDelivery(Base):
    """One attempt to POST an event to its alert's webhook: the outcome, and when the next try is due."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "attempt", name="uq_alert_deliveries_event_attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("alert_events.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    duration_ms: Mapped[float | None] = mapped_column(Float, default=None)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)  # None: no further try
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)  # set on success

    event: Mapped[AlertEvent] = relationship(back_populates="deliveries")
