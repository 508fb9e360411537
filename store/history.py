"""Question history: filters, the database's own full-text search, stable cursor pages, queue state.

Pages are ordered newest first by (created_at, id) and continue strictly after an opaque cursor
holding the last row's pair, so questions arriving meanwhile (always newer, at the top) never
shift a later page: no row is repeated or skipped, unlike offsets. ``created_at`` never changes,
not even on retry (``queued_at`` does).

Search (``q``) takes words, "quoted phrases" and ``or`` between groups, on both databases alike:
words of a group must all occur (stemmed English: "vans" finds "van"); punctuation is ignored.
PostgreSQL answers it with ``websearch_to_tsquery`` against a stored tsvector, whose lexemes a table kept by
a trigger lists newest first (migrations 0005, 0009 and 0011; ``_pg_search``); SQLite with an FTS5 table kept
by triggers (migration 0005), whose matches a page reads newest first (``_sqlite_search``, migration 0010).
Either way a page reads about a page of matches, however many newer questions do not match.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Row,
    Select,
    String,
    and_,
    bindparam,
    column,
    func,
    or_,
    select,
    table,
    text,
    update,
)
from sqlalchemy.orm import Session

from store.models import Question, QuestionStatus, UTCDateTime, utcnow
from store.repo import get_question

PG_TSVECTOR = "questions.questions_fts_vector"
"""The stored tsvector of text and answer (migration 0009; not in the models, like SQLite's FTS5); its lexemes are
listed, newest question first, in ``questions_fts_terms`` (migration 0011)."""
MAX_TERMS = 16
"""Words and phrases a search may hold: enough for any question, bounded work for the database."""
COLUMNS = tuple(Question.__table__.c)
"""What a page reads: every column, as plain rows (attributes named as ``Question``'s) rather than ORM objects,
which cost a page of 50 a third more time to load (identity map, instance state) for rows only serialized."""

_NAMES = tuple(c.key for c in COLUMNS)


def as_dict(row: Row) -> dict[str, Any]:
    """A page's row (of ``COLUMNS``) as a dict: ``Row._asdict`` costs three times as much, and a page makes 50."""
    return dict(zip(_NAMES, row, strict=True))


class BadSearch(ValueError):
    """A search text with nothing to search for, or too much."""


class BadCursor(ValueError):
    """A cursor this API did not make."""


class Conflict(RuntimeError):
    """The question's state does not allow the change (cancel a running one, retry a done one)."""


@dataclass(frozen=True)
class Filters:
    """What a history listing or export selects; always within one tenant."""

    tenant_id: str
    stream_id: str | None = None
    statuses: tuple[str, ...] = ()
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    q: str | None = None


@dataclass(frozen=True)
class Cursor:
    """The (created_at, id) of the last row of a page; encoded opaque, so its form may change."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.astimezone(UTC).isoformat(), self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            created, question_id = json.loads(raw)
            moment = datetime.fromisoformat(created)
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise BadCursor("is not a cursor from this API: pass next_cursor of the previous page as it is") from None
        if moment.tzinfo is None or not isinstance(question_id, str) or len(question_id) > 64:
            raise BadCursor("is not a cursor from this API: pass next_cursor of the previous page as it is")
        return cls(moment.astimezone(UTC), question_id)


# --- search ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r'"([^"]*)"?|(\S+)')


def search_groups(q: str) -> list[list[str]]:
    """``q`` as OR-groups of AND-ed terms (a term: one word, or several for a phrase); BadSearch if none."""
    groups: list[list[str]] = [[]]
    count = 0
    for phrase, word in _TOKEN.findall(q):
        if word.lower() == "or" and phrase == "":
            if groups[-1]:
                groups.append([])
            continue
        words = re.findall(r"\w+", phrase or word)
        if words:
            groups[-1].append(" ".join(words))
            count += 1
    groups = [g for g in groups if g]
    if not groups:
        raise BadSearch("holds no word to search for")
    if count > MAX_TERMS:
        raise BadSearch(f"holds {count} words or phrases; at most {MAX_TERMS} are allowed")
    return groups


def _fts5_query(groups: list[list[str]]) -> str:
    """FTS5 syntax: every term quoted (no operator or column name in the caller's text is ever read)."""
    return " OR ".join("(" + " AND ".join(f'"{term}"' for term in group) + ")" for group in groups)


def _websearch(groups: list[list[str]]) -> str:
    """The same groups for PostgreSQL's websearch_to_tsquery (words, "phrases", or)."""
    return " or ".join(" ".join(f'"{term}"' if " " in term else term for term in group) for group in groups)


_PG_MATCH = text(f"{PG_TSVECTOR} @@ websearch_to_tsquery('english'::regconfig, :search_q)")
"""PostgreSQL's test of a row against the search (SQLite reads its matches in ``_sqlite_search``); ``search_q``
is ``_websearch``'s form of the caller's text."""


FTS_ROWS = table("questions_fts_rows", column("rowid", Integer), column("question_id", String),
                 column("created_max", UTCDateTime))
"""The FTS5 rows' map (migrations 0005 and 0010): question id and the newest ``created_at`` up to each rowid."""
SEARCH_BATCH = 64
"""Matches read at a time, at least; a page needs one batch when questions arrive in time order."""


def _sqlite_search(conn: Connection, filters: Filters, after: Cursor | None, count: int) -> list[Row]:
    """Up to ``count`` matching questions newest first, from FTS5's matches read newest insert first.

    Batches of matches are read by falling rowid and filtered; reading stops when the ``count``-th
    row found is newer than ``created_max`` just below the batch (the newest question inserted
    before it, migration 0010), so no unread match could take its place. In time-ordered data the
    first batch settles a page whatever the history's size, where testing the tenant's rows one by
    one cost a row per newer question that did not match.
    """
    params = {**_params(replace(filters, q=None), after), "match": _fts5_query(search_groups(filters.q or ""))}
    matched = _statement(_shape(replace(filters, q=None), after), search=True)
    batch, below = max(2 * count, SEARCH_BATCH), None
    found: list[Row] = []  # the best ``count`` rows so far, newest first
    while True:
        rowids = list(conn.scalars(_FTS_BELOW if below is not None else _FTS_TOP,
                                   {"match": params["match"], "below": below, "batch": batch}))
        if rowids:
            below = rowids[-1]
            found = sorted([*found, *conn.execute(matched, {**params, "rowids": rowids, "limit": count}).all()],
                           key=lambda row: (row.created_at, row.id), reverse=True)[:count]
        if len(rowids) < batch or (len(found) == count and not _newer_below(conn, below, found[-1].created_at)):
            return found


_FTS_TOP = text("SELECT rowid FROM questions_fts WHERE questions_fts MATCH :match ORDER BY rowid DESC LIMIT :batch")
_FTS_BELOW = text("SELECT rowid FROM questions_fts WHERE questions_fts MATCH :match AND rowid < :below "
                  "ORDER BY rowid DESC LIMIT :batch")
_NEWEST_BELOW = (select(FTS_ROWS.c.created_max)
                 .where(FTS_ROWS.c.rowid < bindparam("below"), FTS_ROWS.c.created_max.is_not(None))
                 .order_by(FTS_ROWS.c.rowid.desc()).limit(1))


def _newer_below(conn: Connection, below: int, last: datetime) -> bool:
    """Whether a question inserted before rowid ``below`` may have been created at ``last`` or later."""
    newest = conn.scalar(_NEWEST_BELOW, {"below": below})
    return newest is not None and newest >= last


_PG_CANDIDATE_ROWS = """SELECT question_id, created_at FROM questions_fts_terms
    WHERE tenant_id = :tenant_id
      AND lexeme = (tsvector_to_array(to_tsvector('english'::regconfig, :search_group)))[1]
      AND (created_at, question_id) < (:below_created, :below_id)
    ORDER BY created_at DESC, question_id DESC LIMIT :batch"""
_PG_CANDIDATES = text(_PG_CANDIDATE_ROWS).columns(
    column("question_id", String), column("created_at", UTCDateTime)).subquery("candidates")
"""A batch of questions holding one lexeme of a search group (every lexeme of a group is required: words are
AND-ed, a phrase needs all of its words), newest first below a (created_at, id) bound, from the term table
(migration 0011), one row a question (the table's key is (question, lexeme)). Stop words give no lexeme, and a
group of them nothing, as in ``websearch_to_tsquery``."""
_PG_BATCH_END = text(f"SELECT created_at, question_id FROM ({_PG_CANDIDATE_ROWS}) AS candidates "
                     "ORDER BY created_at, question_id LIMIT 1 OFFSET :batch - 1")
"""The oldest candidate of a full batch (none when the batch was not full: the group's candidates are all read)."""
PG_SEARCH_BATCH = 256
"""Candidates a search statement may read, at least: it stops at the page's last match, so a large batch costs
nothing where matches are dense and saves a round trip where filters reject many."""
_END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)


def _pg_search(conn: Connection, filters: Filters, after: Cursor | None, count: int) -> list[Row]:
    """Up to ``count`` matching questions newest first, from each search group's candidates read newest first.

    Per group: a batch of the questions holding one of its lexemes, newest first (``_PG_CANDIDATES``),
    joined in that order to the questions and tested against the whole search and the filters in the
    same statement, which stops at its ``count``-th match (no sort: the join keeps the candidates'
    order). Once a batch yields ``count`` rows no unread candidate can be newer; otherwise the next
    batch starts below the oldest candidate read. A page reads about ``count`` questions whatever the
    history holds, where walking the tenant's questions tested every newer one that did not match.
    """
    statement = _statement(_shape(filters, after), terms=True)
    params = {**_params(filters, after), "limit": count, "batch": max(4 * count, PG_SEARCH_BATCH)}
    found: dict[str, Row] = {}
    for group in search_groups(filters.q or ""):
        below = (after.created_at, after.id) if after is not None else (_END_OF_TIME, "")
        while True:
            batch = {**params, "search_group": " ".join(group), "below_created": below[0], "below_id": below[1]}
            rows = conn.execute(statement, batch).all()
            found.update((row.id, row) for row in rows)
            end = conn.execute(_PG_BATCH_END, batch).first() if len(rows) < count else None
            if end is None:
                break
            below = (end.created_at, end.question_id)
    return sorted(found.values(), key=lambda row: (row.created_at, row.id), reverse=True)[:count]


# --- listing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """Which filters a listing has: its statement is built once per shape, its values bound at execution."""

    stream: bool
    statuses: bool
    since: bool
    until: bool
    after: bool
    search: bool  # PostgreSQL's match (SQLite reads its matches in ``_sqlite_search``)


def _shape(filters: Filters, after: Cursor | None) -> _Shape:
    return _Shape(stream=filters.stream_id is not None, statuses=bool(filters.statuses),
                  since=filters.since is not None, until=filters.until is not None, after=after is not None,
                  search=bool(filters.q))


def _params(filters: Filters, after: Cursor | None) -> dict[str, Any]:
    params: dict[str, Any] = {"tenant_id": filters.tenant_id, "stream_id": filters.stream_id,
                              "statuses": list(filters.statuses)}
    if filters.since is not None:
        params["since"] = filters.since.astimezone(UTC)
    if filters.until is not None:
        params["until"] = filters.until.astimezone(UTC)
    if after is not None:
        params.update(after_created=after.created_at, after_id=after.id)
    if filters.q:
        params["search_q"] = _websearch(search_groups(filters.q))
    return params


@functools.cache
def _statement(shape: _Shape, *, search: bool = False, terms: bool = False) -> Select:
    """A page's statement for ``shape``: rows of ``COLUMNS`` newest first, ``limit`` of them; ``search``: among
    the SQLite matches ``rowids``; ``terms``: among a batch of PostgreSQL's candidates (``_PG_CANDIDATES``).
    Built once: a page built per request cost a fifth of its CPU."""
    where: list[ColumnElement[bool]] = [Question.tenant_id == bindparam("tenant_id")]
    if shape.stream:
        where.append(Question.stream_id == bindparam("stream_id"))
    if shape.statuses:
        where.append(Question.status.in_(bindparam("statuses", expanding=True)))
    if shape.since:
        where.append(Question.created_at >= bindparam("since"))
    if shape.until:
        where.append(Question.created_at < bindparam("until"))
    if shape.after:
        where.append(or_(Question.created_at < bindparam("after_created"),
                         and_(Question.created_at == bindparam("after_created"), Question.id < bindparam("after_id"))))
    if shape.search:
        where.append(_PG_MATCH)  # type: ignore[arg-type]
    query = select(*COLUMNS)
    newest_first = (Question.created_at.desc(), Question.id.desc())
    if terms:  # the candidates' order (the same pair: the trigger copies created_at), so the join needs no sort
        query = query.select_from(_PG_CANDIDATES.join(Question, Question.id == _PG_CANDIDATES.c.question_id))
        newest_first = (_PG_CANDIDATES.c.created_at.desc(), _PG_CANDIDATES.c.question_id.desc())
    if search:
        query = query.join(FTS_ROWS, FTS_ROWS.c.question_id == Question.id).where(
            FTS_ROWS.c.rowid.in_(bindparam("rowids", expanding=True)))
    return query.where(*where).order_by(*newest_first).limit(bindparam("limit", type_=Integer))


def page(
    conn: Connection, filters: Filters, *, after: Cursor | None = None, limit: int = 50
) -> tuple[list[Row], Cursor | None]:
    """Up to ``limit`` questions newest first after ``after`` (rows of ``COLUMNS``), and the cursor of the next
    page (None: last)."""
    if filters.q and conn.dialect.name == "sqlite":
        rows = _sqlite_search(conn, filters, after, limit + 1)
    elif filters.q:
        rows = _pg_search(conn, filters, after, limit + 1)
    else:
        params = {**_params(filters, after), "limit": limit + 1}
        rows = list(conn.execute(_statement(_shape(filters, after)), params).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (Cursor(rows[-1].created_at, rows[-1].id) if more and rows else None)


def batches(engine: Engine, filters: Filters, *, size: int = 500) -> Iterator[list[Row]]:
    """Every matching question (rows of ``COLUMNS``), newest first, in batches each read on a connection of its
    own, so an export holds no connection while its client downloads."""
    after: Cursor | None = None
    while True:
        with engine.connect() as conn:
            rows, after = page(conn, filters, after=after, limit=size)
        yield rows
        if after is None:
            return


# --- queue state ----------------------------------------------------------------------------------


QUEUE_POSITION_CAP = 1000
"""Queue positions are counted up to this (it means "this many or more"): every POST reports one, and counting
a backlog of thousands would cost each request a millisecond of database time per thousand."""


def queue_position(conn: Connection, question: Question) -> int | None:
    """Questions queued before this one across the deployment, up to ``QUEUE_POSITION_CAP`` (None unless queued)."""
    if question.status != QuestionStatus.queued:
        return None
    return conn.scalar(_QUEUED_BEFORE, {"queued_at": question.queued_at, "id": question.id,
                                        "cap": QUEUE_POSITION_CAP}) or 0


def queue_length(conn: Connection) -> int:
    """Questions queued now across the deployment, up to ``QUEUE_POSITION_CAP``: a question asked now is queued
    behind them (read before its insert, so that on SQLite the write lock is held for the insert alone)."""
    return conn.scalar(_QUEUED, {"cap": QUEUE_POSITION_CAP}) or 0


def _queued_count(*where: ColumnElement[bool]) -> Select:
    """Queued questions (matching ``where``), counted up to ``cap`` (``QUEUE_POSITION_CAP``).

    The oldest first, and only ``queued_at``: the (status, queued_at) index then answers by itself, in
    order. Unordered, PostgreSQL chose a sequential scan (the queued rows are the newest, at the table's
    end: 2-3 ms a POST with a backlog of a thousand), and reading ``id`` cost SQLite a table row per
    queued question (3 ms of the 8 a POST took).
    """
    queued = (select(Question.queued_at).where(Question.status == QuestionStatus.queued, *where)
              .order_by(Question.queued_at).limit(bindparam("cap", type_=Integer)))
    return select(func.count()).select_from(queued.subquery())


_QUEUED = _queued_count()
_QUEUED_BEFORE = _queued_count(or_(
    Question.queued_at < bindparam("queued_at"),
    and_(Question.queued_at == bindparam("queued_at"), Question.id < bindparam("id")),
))


def cancel(session: Session, question_id: str, *, tenant_id: str) -> Question:
    """A queued question becomes cancelled (a worker that picks it up later skips it); again: no change.

    Conflict for one running or finished. The UPDATE is conditional on ``queued``, so a worker
    claiming the question at the same moment (its own UPDATE is conditional too) and this cancel
    cannot both win.
    """
    question = get_question(session, question_id, tenant_id=tenant_id)
    if question.status == QuestionStatus.cancelled:
        return question
    now = utcnow()
    changed = session.execute(
        update(Question).where(Question.id == question_id, Question.status == QuestionStatus.queued)
        .values(status=QuestionStatus.cancelled, finished_at=now, error="cancelled before a worker answered it")
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.refresh(question)
    if not changed and question.status != QuestionStatus.cancelled:
        raise Conflict(f"question {question_id!r} is {question.status}: only a queued question can be cancelled")
    return question


RETRYABLE = (QuestionStatus.failed, QuestionStatus.cancelled)


def retry(session: Session, question_id: str, *, tenant_id: str) -> Question:
    """A failed or cancelled question is queued again, as asked (its window and overrides); Conflict otherwise.

    Its answer, error, times and attempts are cleared; a relative window is resolved again
    against the memory of the new answer. ``created_at`` stays: its place in history is kept.
    """
    question = get_question(session, question_id, tenant_id=tenant_id)
    values: dict[str, object] = {
        "status": QuestionStatus.queued, "queued_at": utcnow(), "started_at": None, "finished_at": None,
        "answer": None, "error": None, "attempts": 0, "worker_id": None, "covered_start": None,
        "covered_end": None, "visual_tokens_before": None, "visual_tokens_after": None, "memory_tokens": None,
        "specs": None, "timings": {},
    }
    if question.window_last is not None:
        values.update(window_start=None, window_end=None)
    changed = session.execute(
        update(Question).where(Question.id == question_id, Question.status.in_(RETRYABLE)).values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.refresh(question)
    if not changed:
        raise Conflict(f"question {question_id!r} is {question.status}: only a failed or cancelled question "
                       "can be retried")
    return question


def changed_since(
    session: Session, *, tenant_id: str, stream_id: str, since: datetime, limit: int
) -> Sequence[Question]:
    """A stream's questions changed after ``since``, oldest change first (the stream's event feed)."""
    query = (
        select(Question)
        .where(Question.stream_id == stream_id, Question.tenant_id == tenant_id, Question.updated_at > since)
        .order_by(Question.updated_at, Question.id).limit(limit)
    )
    return list(session.scalars(query))
