"""Server-sent events and long-polls over the database: the API meets workers only there.

Workers change question rows in the database, in this process or on other machines, so every
wait here polls it: one indexed read per ``events_poll_s`` (a primary key, or a stream's
``updated_at``), each in its own short session in the thread pool, so that a waiting client
holds neither a connection nor the event loop. Streams carry a heartbeat comment every
``sse_heartbeat_s`` and end after ``sse_max_s``; a client reconnects with ``Last-Event-ID``
and continues where it was.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

RETRY_MS = 1000
"""What a client waits before reconnecting after a stream ended (the ``retry:`` field)."""


def event(name: str | None, data: Any = None, *, id: str | None = None, retry: int | None = None) -> bytes:
    """One event in the text/event-stream format; ``data`` is sent as one line of JSON."""
    lines = []
    if name is not None:
        lines.append(f"event: {name}")
    if id is not None:
        lines.append(f"id: {id}")
    if retry is not None:
        lines.append(f"retry: {retry}")
    if data is not None:
        lines.append("data: " + json.dumps(data, ensure_ascii=True, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """A comment line: clients ignore it, proxies see traffic (the heartbeat)."""
    return f": {text}\n\n".encode()


class EventStream(StreamingResponse):
    """``text/event-stream``, not cached nor buffered by proxies."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def release(session: Session) -> None:
    """Commit and close the request's session before a long wait, so the wait holds no pooled connection.

    The auth dependency read (and may have written) through it; the route's reads use their own
    short sessions from then on.
    """

    def done() -> None:
        session.commit()
        session.close()

    await run_in_threadpool(done)


class Clock:
    """Deadlines of one wait: when it ends, and when the next heartbeat is due."""

    def __init__(self, lifetime_s: float, heartbeat_s: float) -> None:
        now = time.monotonic()
        self.ends, self.heartbeat_s, self.beat = now + lifetime_s, heartbeat_s, now + heartbeat_s

    @property
    def over(self) -> bool:
        return time.monotonic() >= self.ends

    def heartbeat_due(self) -> bool:
        now = time.monotonic()
        if now < self.beat:
            return False
        self.beat = now + self.heartbeat_s
        return True

    def sent(self) -> None:
        """Any event counts as traffic: the next heartbeat is a full period later."""
        self.beat = time.monotonic() + self.heartbeat_s

    async def nap(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, self.ends - time.monotonic())))


def event_id(moment: datetime) -> str:
    """An event id from a row's change time (microseconds, UTC ISO 8601): what ``Last-Event-ID`` resumes from."""
    return moment.isoformat()


def parse_event_id(value: str) -> datetime:
    """The change time in a ``Last-Event-ID``; ValueError for an id this API did not send."""
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        raise ValueError("has no time zone")
    return moment
