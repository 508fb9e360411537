"""A stream's event feed (``GET /streams/{id}/events``): every source of events about one stream, merged.

A source is a function ``(session, FeedQuery) -> [FeedEvent]`` returning the stream's events after
``query.since``, oldest first, at most ``query.limit``; it is registered by appending it to
``FEED_SOURCES``. Questions changing state are the first source; alerts add theirs the same way.

Delivery is at least once. Sources are polled from a little before the cursor (``events_lag_s``),
since a row's change time is taken before its transaction commits and a slow commit may land
behind newer ones; events seen in that overlap are not sent twice on one connection, but a
client resuming with ``Last-Event-ID`` may get a few again (the key of an event, e.g. a question's
id and status, tells it so).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from api import sse
from api.alert_schemas import EventPublic
from api.deps import in_session
from api.schemas import QuestionPublic
from store import alerts as alerts_store
from store import history
from vidmem.settings import Settings
from workers.runtime import Runtime


@dataclass(frozen=True)
class FeedEvent:
    """One event of a stream's feed."""

    name: str  # the SSE event name: "question", "alert", ...
    key: str  # identity of this change: the same key is not sent twice on one connection
    at: datetime  # when it happened (UTC): the feed's order, and what Last-Event-ID resumes from
    data: dict[str, Any]  # the event's JSON


@dataclass(frozen=True)
class FeedQuery:
    tenant_id: str
    stream_id: str
    since: datetime  # events strictly after this
    limit: int


FeedSource = Callable[[Session, FeedQuery], Sequence[FeedEvent]]


def question_events(session: Session, query: FeedQuery) -> list[FeedEvent]:
    """Questions of the stream that changed (queued, running, done, failed, cancelled, retried)."""
    rows = history.changed_since(
        session, tenant_id=query.tenant_id, stream_id=query.stream_id, since=query.since, limit=query.limit
    )
    return [
        FeedEvent("question", f"question:{q.id}:{q.status}:{sse.event_id(q.updated_at)}", q.updated_at,
                  public_question(session, q).model_dump(mode="json"))
        for q in rows
    ]


def public_question(session: Session, question: Any) -> QuestionPublic:
    """The question as the API shows it, with its queue position while queued."""
    public = QuestionPublic.model_validate(question)
    public.queue_position = history.queue_position(session.connection(), question)
    return public


def alert_events(session: Session, query: FeedQuery) -> list[FeedEvent]:
    """Events the stream's alerts fired, as ``GET /events/{id}`` shows them (``store.alerts``)."""
    rows = alerts_store.events_since(
        session, tenant_id=query.tenant_id, stream_id=query.stream_id, since=query.since, limit=query.limit
    )
    return [FeedEvent("alert", f"alert:{e.id}", e.created_at, EventPublic.of(e).model_dump(mode="json")) for e in rows]


FEED_SOURCES: list[FeedSource] = [question_events, alert_events]
"""Every source of a stream's feed; append one to add a kind of event."""


def collect(session: Session, query: FeedQuery, sources: Sequence[FeedSource]) -> list[FeedEvent]:
    """Every source's events after ``query.since``, all of them (page by page), in time order."""
    found: list[FeedEvent] = []
    for source in sources:
        since = query.since
        while True:
            batch = list(source(session, FeedQuery(query.tenant_id, query.stream_id, since, query.limit)))
            found.extend(batch)
            if len(batch) < query.limit:
                break
            since = batch[-1].at
    return sorted(found, key=lambda e: (e.at, e.key))


async def stream_feed(
    runtime: Runtime, settings: Settings, *, tenant_id: str, stream_id: str, start: datetime,
    sources: Sequence[FeedSource] | None = None,
) -> AsyncIterator[bytes]:
    """The feed's bytes from ``start`` on, until ``sse_max_s``: events, and heartbeats between them."""
    sources = FEED_SOURCES if sources is None else sources
    lag = timedelta(seconds=settings.events_lag_s)
    clock = sse.Clock(settings.sse_max_s, settings.sse_heartbeat_s)
    cursor, seen = start, dict[str, datetime]()
    yield sse.event(None, retry=sse.RETRY_MS) + sse.comment("feed")
    while True:
        query = FeedQuery(tenant_id, stream_id, cursor - lag, settings.events_batch)
        for item in await in_session(runtime, lambda s, q=query: collect(s, q, sources), read_only=True):
            if item.key in seen:
                continue
            seen[item.key], cursor = item.at, max(cursor, item.at)
            clock.sent()
            yield sse.event(item.name, item.data, id=sse.event_id(cursor))
        seen = {key: at for key, at in seen.items() if at >= cursor - lag}
        if clock.over:
            return
        if clock.heartbeat_due():
            yield sse.comment("ping")
        await clock.nap(settings.events_poll_s)
