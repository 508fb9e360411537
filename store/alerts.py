"""Keyword-only data access of standing questions (alerts), their events and webhook deliveries.

Every read the API makes names the caller's tenant, so another tenant's ids are NotFound. The workers'
writes are compare-and-set updates on the alert row: at most one evaluation is queued per alert and
period (``claim_evaluation``) and at most one answer recorded per alert and chunk (``record_answer``),
however often a task is delivered.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from store.models import Alert, AlertDelivery, AlertEvent, Stream, utcnow
from store.repo import NotFound


class BadCursor(ValueError):
    """A page cursor this API did not hand out."""


def tenant_stream(session: Session, *, tenant_id: str, stream_id: str) -> Stream:
    """The stream if it is the tenant's; NotFound for another tenant's, exactly as for none."""
    stream = session.get(Stream, stream_id)
    if stream is None or stream.tenant_id != tenant_id:
        raise NotFound(f"stream {stream_id!r} not found")
    return stream


def create_alert(session: Session, *, tenant_id: str, stream_id: str, **fields: Any) -> Alert:
    """A new alert on a stream the caller has checked is the tenant's; ``fields`` are Alert columns."""
    alert = Alert(tenant_id=tenant_id, stream_id=stream_id, **fields)
    session.add(alert)
    session.flush()
    return alert


def count_stream_alerts(session: Session, *, stream_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Alert).where(Alert.stream_id == stream_id)) or 0


def get_alert(session: Session, *, tenant_id: str, alert_id: str) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None or alert.tenant_id != tenant_id:
        raise NotFound(f"alert {alert_id!r} not found")
    return alert


def list_alerts(
    session: Session, *, tenant_id: str, stream_id: str | None = None, active: bool | None = None,
    skip: int = 0, limit: int = 50,
) -> tuple[list[Alert], int]:
    """The tenant's alerts (of one stream, when given) newest first, a page of them, and how many match."""
    where = [Alert.tenant_id == tenant_id]
    if stream_id is not None:
        where.append(Alert.stream_id == stream_id)
    if active is not None:
        where.append(Alert.active.is_(active))
    rows = session.scalars(
        select(Alert).where(*where).order_by(Alert.created_at.desc(), Alert.id.desc()).offset(skip).limit(limit)
    )
    total = session.scalar(select(func.count()).select_from(Alert).where(*where)) or 0
    return list(rows), total


def delete_alert(session: Session, *, tenant_id: str, alert_id: str) -> None:
    """Delete the alert with its events and their deliveries (explicitly: no reliance on the database's cascade)."""
    alert = get_alert(session, tenant_id=tenant_id, alert_id=alert_id)
    events = select(AlertEvent.id).where(AlertEvent.alert_id == alert.id)
    session.execute(delete(AlertDelivery).where(AlertDelivery.event_id.in_(events)))
    session.execute(delete(AlertEvent).where(AlertEvent.alert_id == alert.id))
    session.delete(alert)


# ---------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Cursor:
    """Where a page of events ends: the last row's creation time and id (keyset, newest first)."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            when, _, event_id = raw.partition("|")
            created = datetime.fromisoformat(when)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise BadCursor("is not a cursor from a previous page") from None
        if not event_id or len(event_id) > 32 or created.tzinfo is None:
            raise BadCursor("is not a cursor from a previous page")
        return cls(created, event_id)


def list_events(
    session: Session, *, tenant_id: str, alert_id: str | None = None, stream_id: str | None = None,
    after: Cursor | None = None, limit: int = 50,
) -> tuple[list[AlertEvent], Cursor | None]:
    """The tenant's events newest first, one page after ``after``, and the cursor of the next page (None: last).

    Keyset pagination on (created_at, id): events that arrive while a client pages never shift or repeat
    the rows of later pages.
    """
    query = select(AlertEvent).where(AlertEvent.tenant_id == tenant_id).options(selectinload(AlertEvent.deliveries))
    if alert_id is not None:
        query = query.where(AlertEvent.alert_id == alert_id)
    if stream_id is not None:
        query = query.where(AlertEvent.stream_id == stream_id)
    if after is not None:
        query = query.where(or_(AlertEvent.created_at < after.created_at,
                                and_(AlertEvent.created_at == after.created_at, AlertEvent.id < after.id)))
    rows = list(session.scalars(query.order_by(AlertEvent.created_at.desc(), AlertEvent.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    more = len(rows) > limit
    return page, Cursor(page[-1].created_at, page[-1].id) if more else None


def events_since(session: Session, *, tenant_id: str, stream_id: str, since: datetime, limit: int) -> list[AlertEvent]:
    """The stream's events stored after ``since``, oldest first (a stream's SSE feed, ``api.feed``)."""
    query = (select(AlertEvent).where(AlertEvent.tenant_id == tenant_id, AlertEvent.stream_id == stream_id,
                                      AlertEvent.created_at > since)
             .options(selectinload(AlertEvent.deliveries)).order_by(AlertEvent.created_at, AlertEvent.id).limit(limit))
    return list(session.scalars(query))


def get_event(session: Session, *, tenant_id: str, event_id: str) -> AlertEvent:
    event = session.get(AlertEvent, event_id)
    if event is None or event.tenant_id != tenant_id:
        raise NotFound(f"event {event_id!r} not found")
    return event


def event_thumbnail(session: Session, *, tenant_id: str, event_id: str) -> bytes:
    """The event's JPEG; NotFound when the event is not the tenant's or has none (its frames had expired)."""
    row = session.execute(
        select(AlertEvent.tenant_id, AlertEvent.thumbnail).where(AlertEvent.id == event_id)
    ).one_or_none()
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"event {event_id!r} not found")
    if row.thumbnail is None:
        raise NotFound(f"event {event_id!r} has no thumbnail (the chunk's frames had expired)")
    return bytes(row.thumbnail)


# ---------------------------------------------------------------------------------------------- workers


def active_alerts(session: Session, *, stream_id: str) -> list[Alert]:
    return list(session.scalars(select(Alert).where(Alert.stream_id == stream_id, Alert.active.is_(True))))


def claim_evaluation(session: Session, *, alert_id: str, seq: int, t_end: float, previous_seq: int | None) -> bool:
    """Mark chunk ``seq`` (ending at stream time ``t_end``) as the alert's latest queued evaluation.

    True for exactly one caller: the row must still show ``previous_seq``, as the caller read it.
    """
    same = Alert.last_eval_seq.is_(None) if previous_seq is None else Alert.last_eval_seq == previous_seq
    done = session.execute(
        update(Alert).where(Alert.id == alert_id, same).values(last_eval_seq=seq, last_eval_t=t_end)
    )
    return done.rowcount == 1  # type: ignore[attr-defined]


def record_answer(session: Session, *, alert_id: str, seq: int, answer: str | None, fired_t: float | None) -> bool:
    """Record the answer on chunk ``seq`` unless one on it (or a later chunk) is recorded; True when recorded."""
    values: dict[str, Any] = {"last_answered_seq": seq, "last_answer": answer, "last_answered_at": utcnow()}
    if fired_t is not None:
        values["last_fired_t"] = fired_t
    done = session.execute(
        update(Alert)
        .where(Alert.id == alert_id, or_(Alert.last_answered_seq.is_(None), Alert.last_answered_seq < seq))
        .values(**values)
    )
    return done.rowcount == 1  # type: ignore[attr-defined]


def record_delivery(session: Session, *, event_id: str, attempt: int, **outcome: Any) -> AlertDelivery:
    """One webhook attempt's row (``outcome``: AlertDelivery columns); IntegrityError if that attempt is recorded."""
    delivery = AlertDelivery(event_id=event_id, attempt=attempt, **outcome)
    session.add(delivery)
    session.flush()
    return delivery
