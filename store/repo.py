"""Keyword-only data access helpers used by the API and the workers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from store.models import (
    DEFAULT_TENANT,
    ChunkRecord,
    ChunkStatus,
    LeaseState,
    Question,
    QuestionStatus,
    Stream,
    StreamLease,
    StreamStatus,
    WorkerBeat,
    new_id,
    utcnow,
)


class NotFound(LookupError):
    """A row the caller named does not exist."""


def create_stream(
    session: Session, *, name: str, source_url: str, loop: bool = False, tenant_id: str = DEFAULT_TENANT,
) -> Stream:
    stream = Stream(
        name=name, source_url=source_url, loop=loop, status=StreamStatus.connecting, stats={}, tenant_id=tenant_id
    )
    session.add(stream)
    session.flush()
    return stream


def get_stream(session: Session, stream_id: str, *, tenant_id: str | None = None) -> Stream:
    """The stream; with ``tenant_id`` (every API caller) another tenant's stream is NotFound like a missing one."""
    stream = session.get(Stream, stream_id)
    if stream is None or (tenant_id is not None and stream.tenant_id != tenant_id):
        raise NotFound(f"stream {stream_id!r} not found")
    return stream


def list_streams(
    session: Session, *, active_only: bool = False, status: str | None = None,
    skip: int = 0, limit: int | None = None, tenant_id: str | None = None, include_deleted: bool = True,
) -> list[Stream]:
    """Streams newest first (of one tenant when ``tenant_id`` is given); a page of them when ``limit`` is given.

    ``include_deleted=False`` leaves out streams deleted with their history kept (``deleted_at`` set).
    """
    query = select(Stream).order_by(Stream.created_at.desc(), Stream.id)
    if tenant_id is not None:
        query = query.where(Stream.tenant_id == tenant_id)
    if not include_deleted:
        query = query.where(Stream.deleted_at.is_(None))
    if active_only:
        query = query.where(Stream.active.is_(True))
    if status is not None:
        query = query.where(Stream.status == status)
    if skip or limit is not None:
        query = query.offset(skip).limit(limit)
    return list(session.scalars(query))


def count_streams(
    session: Session, *, status: str | None = None, tenant_id: str | None = None, include_deleted: bool = True,
) -> int:
    """How many streams are registered (with ``status``, of ``tenant_id``, not deleted, when given)."""
    query = select(func.count()).select_from(Stream)
    if tenant_id is not None:
        query = query.where(Stream.tenant_id == tenant_id)
    if not include_deleted:
        query = query.where(Stream.deleted_at.is_(None))
    if status is not None:
        query = query.where(Stream.status == status)
    return session.scalar(query) or 0


def set_stream_status(
    session: Session, *, stream_id: str, status: str, reason: str | None = None,
    stats: dict[str, Any] | None = None,
) -> None:
    values: dict[str, Any] = {"status": status, "status_reason": reason, "updated_at": utcnow()}
    if stats is not None:
        values["stats"] = _keeping_tallies(_lock_stream_stats(session, stream_id), stats)
    session.execute(update(Stream).where(Stream.id == stream_id).values(**values))


def set_stream_stats(session: Session, *, stream_id: str, stats: dict[str, Any]) -> None:
    """Replace the ingest's counters; tallies kept by the store itself (``KEPT_STATS``) stay."""
    stats = _keeping_tallies(_lock_stream_stats(session, stream_id), stats)
    session.execute(update(Stream).where(Stream.id == stream_id).values(stats=stats, updated_at=utcnow()))


# Stream stats that the ingest does not write: chunk rows deleted by retention, by status.
KEPT_STATS = ("chunks_pruned", "tokens_pruned")


def _lock_stream_stats(session: Session, stream_id: str) -> dict[str, Any]:
    """The stream's stats, read after an UPDATE of its row so that no other writer interleaves.

    The UPDATE takes SQLite's write lock and PostgreSQL's row lock until the commit, which makes
    read-modify-write of the stats safe between the ingest's threads and housekeeping.
    """
    session.execute(update(Stream).where(Stream.id == stream_id).values(updated_at=utcnow()))
    return dict(session.scalar(select(Stream.stats).where(Stream.id == stream_id)) or {})


def _keeping_tallies(current: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    return {**stats, **{key: current[key] for key in KEPT_STATS if key in current}}


def prune_chunks(session: Session, *, older_than: datetime) -> dict[str, dict[str, int]]:
    """Delete finished chunk rows created before ``older_than``; pruned counts by stream and status.

    Pending rows are never deleted (a worker still needs them), nor is each stream's newest row
    (ingest resumes its seq after it). The counts are added to ``stats["chunks_pruned"]`` of each
    stream so that its chunk totals stay known.
    """
    newer = aliased(ChunkRecord)
    newest_seq = select(func.max(newer.seq)).where(newer.stream_id == ChunkRecord.stream_id).scalar_subquery()
    where = (
        ChunkRecord.status != ChunkStatus.pending, ChunkRecord.created_at < older_than, ChunkRecord.seq < newest_seq,
    )
    counts: dict[str, dict[str, int]] = {}
    query = select(ChunkRecord.stream_id, ChunkRecord.status, func.count()).where(*where)
    for stream_id, status, n in session.execute(query.group_by(ChunkRecord.stream_id, ChunkRecord.status)):
        counts.setdefault(stream_id, {})[status] = n
    if not counts:
        return counts
    token_sums = (select(ChunkRecord.stream_id, func.coalesce(func.sum(ChunkRecord.tokens_in), 0),
                         func.coalesce(func.sum(ChunkRecord.tokens_out), 0))
                  .where(*where).group_by(ChunkRecord.stream_id))
    tokens = {stream_id: (int(n_in), int(n_out)) for stream_id, n_in, n_out in session.execute(token_sums)}
    session.execute(delete(ChunkRecord).where(*where).execution_options(synchronize_session=False))
    for stream_id, pruned in counts.items():
        stats = _lock_stream_stats(session, stream_id)
        tally = dict(stats.get("chunks_pruned") or {})
        for status, n in pruned.items():
            tally[status] = int(tally.get(status, 0)) + n
        n_in, n_out = tokens.get(stream_id, (0, 0))  # so that token totals (/metrics) never go down
        old = stats.get("tokens_pruned") or {}
        token_tally = {"in": int(old.get("in", 0)) + n_in, "out": int(old.get("out", 0)) + n_out}
        session.execute(update(Stream).where(Stream.id == stream_id)
                        .values(stats={**stats, "chunks_pruned": tally, "tokens_pruned": token_tally}))
    return counts


def pending_blob_keys(session: Session) -> set[str]:
    """Blob keys of chunks a worker may still read: every other frame blob is an orphan."""
    query = select(ChunkRecord.blob_key).where(ChunkRecord.status == ChunkStatus.pending)
    return set(session.scalars(query))


def question_counts(session: Session, *, stream_ids: list[str] | None = None) -> dict[tuple[str, str], int]:
    """Questions by (stream id, status), of ``stream_ids`` only when given."""
    query = select(Question.stream_id, Question.status, func.count()).group_by(Question.stream_id, Question.status)
    if stream_ids is not None:
        query = query.where(Question.stream_id.in_(stream_ids))
    return {(stream_id, status): n for stream_id, status, n in session.execute(query).all()}


def stream_status_counts(session: Session) -> dict[str, int]:
    """Streams by status, over the whole deployment."""
    query = select(Stream.status, func.count()).group_by(Stream.status)
    return {str(status): n for status, n in session.execute(query).all()}


def create_question(
    session: Session, *, stream_id: str, text: str,
    window_start: float | None = None, window_end: float | None = None, tenant_id: str | None = None,
    **fields: Any,
) -> Question:
    """A queued question about a stream (of ``tenant_id`` when given); it carries the stream's tenant.
    ``fields``: other columns (the asked window, overrides), set before the one INSERT."""
    stream = get_stream(session, stream_id, tenant_id=tenant_id)
    question = Question(
        stream_id=stream_id, tenant_id=stream.tenant_id, text=text, status=QuestionStatus.queued,
        window_start=window_start, window_end=window_end, timings={}, **fields,
    )
    session.add(question)
    session.flush()
    return question


_STREAM_EPOCH = select(Stream.media_epoch).where(Stream.id == bindparam("stream_id"),
                                                 Stream.tenant_id == bindparam("tenant_id"))


def stream_media_epoch(conn: Connection, stream_id: str, *, tenant_id: str) -> datetime | None:
    """The media epoch of a tenant's stream (None: no video yet); NotFound for a missing or another tenant's
    stream. Core: a question asked with clock times pays for it."""
    row = conn.execute(_STREAM_EPOCH, {"stream_id": stream_id, "tenant_id": tenant_id}).first()
    if row is None:
        raise NotFound(f"stream {stream_id!r} not found")
    return row.media_epoch


QUEUE_FIELDS = ("window_start", "window_end", "window_last", "media_epoch", "stage2", "llm_budget",
                "max_answer_tokens")
"""What a caller may set on a question it queues (``queue_question``); the rest is the queue's."""


def _queue_statement() -> Insert:
    """INSERT ... SELECT from the stream's row if it is the tenant's: the check and the write in one statement
    (on PostgreSQL in autocommit, one round trip where a read, then the insert in a transaction, took four)."""
    column = Question.__table__.c
    values: dict[str, Any] = {
        "id": bindparam("q_id", type_=column.id.type), "stream_id": Stream.id, "tenant_id": Stream.tenant_id,
        "text": bindparam("q_text", type_=column.text.type),
        "status": bindparam("q_status", type_=column.status.type),
        "timings": bindparam("q_timings", type_=column.timings.type),
        "attempts": bindparam("q_attempts", type_=column.attempts.type),
        **{name: bindparam("q_now", type_=column[name].type) for name in ("created_at", "queued_at", "updated_at")},
        **{name: bindparam(f"q_{name}", type_=column[name].type) for name in QUEUE_FIELDS},
    }
    source = select(*values.values()).where(Stream.id == bindparam("q_stream_id"),
                                            Stream.tenant_id == bindparam("q_tenant_id"))
    # the rows inserted tell a stream not found: psycopg reports them only when asked to keep the count
    return insert(Question).from_select(list(values), source).execution_options(preserve_rowcount=True)


_QUEUE = _queue_statement()


def queue_question(conn: Connection, *, stream_id: str, tenant_id: str, text: str, **fields: Any) -> str:
    """Insert a queued question about a tenant's stream (NotFound for a missing or another tenant's stream);
    ``fields``: the asked window and overrides (``QUEUE_FIELDS``). One statement, no ORM object; returns the id."""
    unknown = set(fields) - set(QUEUE_FIELDS)
    if unknown:
        raise TypeError(f"queue_question takes no {sorted(unknown)}")
    question_id = new_id()
    params = {f"q_{name}": fields.get(name) for name in QUEUE_FIELDS}
    inserted = conn.execute(_QUEUE, {
        **params, "q_id": question_id, "q_text": text, "q_status": QuestionStatus.queued.value, "q_timings": {},
        "q_attempts": 0, "q_now": utcnow(), "q_stream_id": stream_id, "q_tenant_id": tenant_id,
    }).rowcount
    if inserted != 1:
        raise NotFound(f"stream {stream_id!r} not found")
    return question_id


def get_question(session: Session, question_id: str, *, tenant_id: str | None = None) -> Question:
    """The question; with ``tenant_id`` another tenant's question is NotFound like a missing one."""
    question = session.get(Question, question_id)
    if question is None or (tenant_id is not None and question.tenant_id != tenant_id):
        raise NotFound(f"question {question_id!r} not found")
    return question


def list_questions(
    session: Session, *, stream_id: str, skip: int = 0, limit: int = 50, tenant_id: str | None = None,
) -> tuple[list[Question], int]:
    """A page of a stream's questions (of a stream of ``tenant_id`` when given), newest first, and the total count."""
    get_stream(session, stream_id, tenant_id=tenant_id)
    where = Question.stream_id == stream_id
    total = session.scalar(select(func.count()).select_from(Question).where(where)) or 0
    query = select(Question).where(where).order_by(Question.created_at.desc(), Question.id).offset(skip).limit(limit)
    return list(session.scalars(query)), total


def unfinished_questions(session: Session) -> list[Question]:
    """Questions queued or left running (a worker died): candidates for re-enqueueing at start."""
    query = select(Question).where(Question.status.in_([QuestionStatus.queued, QuestionStatus.running]))
    return list(session.scalars(query.order_by(Question.created_at)))


def create_chunk(
    session: Session, *, stream_id: str, seq: int, t_start: float, t_end: float, num_frames: int, blob_key: str,
) -> ChunkRecord:
    chunk = ChunkRecord(
        stream_id=stream_id, seq=seq, t_start=t_start, t_end=t_end,
        num_frames=num_frames, blob_key=blob_key, status=ChunkStatus.pending, timings={},
    )
    session.add(chunk)
    session.flush()
    return chunk


def get_chunk(session: Session, *, stream_id: str, seq: int) -> ChunkRecord:
    chunk = session.scalar(select(ChunkRecord).where(ChunkRecord.stream_id == stream_id, ChunkRecord.seq == seq))
    if chunk is None:
        raise NotFound(f"chunk {seq} of stream {stream_id!r} not found")
    return chunk


def pending_chunks(session: Session, *, stream_id: str) -> list[ChunkRecord]:
    query = select(ChunkRecord).where(ChunkRecord.stream_id == stream_id, ChunkRecord.status == ChunkStatus.pending)
    return list(session.scalars(query.order_by(ChunkRecord.seq)))


def chunks_before(session: Session, *, stream_id: str, seq: int, after: int) -> list[ChunkRecord]:
    """Chunks with ``after < chunk.seq < seq``: what must be settled before ``seq`` may be applied."""
    query = select(ChunkRecord).where(
        ChunkRecord.stream_id == stream_id, ChunkRecord.seq > after, ChunkRecord.seq < seq
    )
    return list(session.scalars(query.order_by(ChunkRecord.seq)))


def chunk_counts(session: Session, *, stream_id: str) -> dict[str, int]:
    query = (
        select(ChunkRecord.status, func.count())
        .where(ChunkRecord.stream_id == stream_id)
        .group_by(ChunkRecord.status)
    )
    counts = {status.value: 0 for status in ChunkStatus}
    counts.update(dict(session.execute(query).all()))
    return counts


def stream_token_totals(session: Session, *, stream_id: str) -> tuple[int, int]:
    """Visual tokens encoded and kept by stage 1, summed over the applied chunks of a stream."""
    query = select(
        func.coalesce(func.sum(ChunkRecord.tokens_in), 0), func.coalesce(func.sum(ChunkRecord.tokens_out), 0)
    )
    encoded, kept = session.execute(query.where(ChunkRecord.stream_id == stream_id)).one()
    return int(encoded), int(kept)


def stream_timings(session: Session, *, stream_id: str) -> dict[str, float]:
    """Summed per-stage milliseconds over the applied chunks of a stream."""
    totals: dict[str, float] = {}
    query = select(ChunkRecord.timings).where(
        ChunkRecord.stream_id == stream_id, ChunkRecord.status == ChunkStatus.applied
    )
    for timings in session.scalars(query):
        for key, value in (timings or {}).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def list_chunks(session: Session, *, stream_id: str) -> list[ChunkRecord]:
    query = select(ChunkRecord).where(ChunkRecord.stream_id == stream_id)
    return list(session.scalars(query.order_by(ChunkRecord.seq)))


def first_pending_chunk(session: Session, *, stream_id: str) -> ChunkRecord | None:
    """The stream's lowest pending chunk: the only one its chain may apply next."""
    query = select(ChunkRecord).where(ChunkRecord.stream_id == stream_id, ChunkRecord.status == ChunkStatus.pending)
    return session.scalars(query.order_by(ChunkRecord.seq).limit(1)).first()


def lock_lease(session: Session, *, stream_id: str) -> StreamLease:
    """The stream's lease row, created when missing, locked until the commit.

    The UPDATE takes PostgreSQL's row lock and SQLite's write lock, so that starting, taking
    over and ending a stream's chain are serialised between ingest and every worker.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    now = utcnow()
    session.execute(
        insert(StreamLease).values(stream_id=stream_id, token=0, state=LeaseState.idle, updated_at=now)
        .on_conflict_do_nothing(index_elements=["stream_id"])
    )
    session.execute(update(StreamLease).where(StreamLease.stream_id == stream_id).values(updated_at=now))
    query = select(StreamLease).where(StreamLease.stream_id == stream_id).execution_options(populate_existing=True)
    return session.scalars(query).one()


def busy_leases(session: Session) -> list[StreamLease]:
    """Leases of streams whose chain is queued or running: what the recovery check looks at."""
    return list(session.scalars(select(StreamLease).where(StreamLease.state != LeaseState.idle)))


def streams_without_chain(session: Session) -> list[str]:
    """Streams with pending chunks and no active chain (none started, or a start that failed)."""
    busy = select(StreamLease.stream_id).where(StreamLease.state != LeaseState.idle)
    query = select(ChunkRecord.stream_id).where(
        ChunkRecord.status == ChunkStatus.pending, ChunkRecord.stream_id.not_in(busy)
    )
    return list(session.scalars(query.distinct()))


def running_questions(session: Session) -> list[Question]:
    return list(session.scalars(select(Question).where(Question.status == QuestionStatus.running)))


def beat_worker(session: Session, *, worker_id: str, hostname: str, pid: int, queues: str) -> None:
    """Record that worker ``worker_id`` is alive now (its row is created on the first beat)."""
    now = utcnow()
    done = session.execute(update(WorkerBeat).where(WorkerBeat.id == worker_id).values(beat_at=now))
    if done.rowcount == 0:  # type: ignore[attr-defined]
        session.add(WorkerBeat(id=worker_id, hostname=hostname, pid=pid, queues=queues, started_at=now, beat_at=now))


def live_worker_ids(session: Session, *, since: datetime) -> set[str]:
    return set(session.scalars(select(WorkerBeat.id).where(WorkerBeat.beat_at >= since)))


def list_workers(session: Session) -> list[WorkerBeat]:
    return list(session.scalars(select(WorkerBeat).order_by(WorkerBeat.started_at)))


def forget_workers(
    session: Session, *, worker_ids: list[str] | None = None, beat_before: datetime | None = None
) -> int:
    """Delete heartbeat rows: of ``worker_ids`` (stopped or known dead), or last beating before ``beat_before``."""
    query = delete(WorkerBeat)
    if worker_ids is not None:
        query = query.where(WorkerBeat.id.in_(worker_ids))
    if beat_before is not None:
        query = query.where(WorkerBeat.beat_at < beat_before)
    return session.execute(query).rowcount  # type: ignore[attr-defined]


def set_media_epoch(session: Session, *, stream_id: str, epoch: datetime) -> None:
    """Record the wall-clock time of the stream's second 0 (ingest, at each (re)connect)."""
    session.execute(update(Stream).where(Stream.id == stream_id).values(media_epoch=epoch))


def delete_stream_rows(session: Session, *, stream_id: str) -> int:
    """Delete the stream's row; its questions, chunks, lease and alerts go with it (ON DELETE CASCADE).

    Returns how many questions went. A core DELETE, not ``session.delete``: that would load every
    question to cascade in Python.
    """
    questions = session.scalar(select(func.count()).select_from(Question).where(Question.stream_id == stream_id))
    session.execute(delete(Stream).where(Stream.id == stream_id).execution_options(synchronize_session=False))
    return int(questions or 0)
