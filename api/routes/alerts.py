"""Standing questions (alerts) on a stream, the events they fired and the webhook deliveries of each event.

Every route is the caller's tenant's: another tenant's stream, alert or event ids answer 404, exactly as
ids that do not exist. Evaluations run on the workers' ``alerts`` queue (``workers.alerts``); here the
rows are only made, read, changed and deleted.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException, Query, Response, status

from api.alert_schemas import (
    AlertCreate,
    AlertCreated,
    AlertPublic,
    AlertsPublic,
    AlertUpdate,
    EventPublic,
    EventsPage,
)
from api.deps import SessionDep, SettingsDep, Skip, TenantDep, field_error
from ingest.sources import redact_text
from store import alerts as alerts_repo
from store.credentials import CredentialsUnavailable, encrypt_text
from store.models import Alert
from store.repo import NotFound
from vidmem.settings import Settings
from workers.webhooks import WebhookRefused, check_webhook_url

router = APIRouter(tags=["alerts"])

SECRET_BYTES = 32
PageLimit = Query(50, ge=1, le=200, description="rows per page")


def alert_public(alert: Alert) -> AlertPublic:
    return AlertPublic.model_validate(alert)


def _webhook_columns(url: str | None, settings: Settings) -> dict[str, str | None]:
    """The webhook's stored form: redacted for display, encrypted in full when it carries credentials."""
    if url is None:
        return {"webhook_url": None, "webhook_url_secret": None}
    try:
        check_webhook_url(url, settings)
    except WebhookRefused as exc:
        raise field_error(("body", "webhook_url"), str(exc)) from None
    shown = redact_text(url)
    return {"webhook_url": shown, "webhook_url_secret": encrypt_text(url, settings) if shown != url else None}


@router.post("/streams/{stream_id}/alerts", status_code=status.HTTP_201_CREATED)
def create_alert(
    stream_id: str, body: AlertCreate, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> AlertCreated:
    """Register a standing question on a stream; the response holds the webhook signing secret, once."""
    stream = alerts_repo.tenant_stream(session, tenant_id=tenant, stream_id=stream_id)
    if getattr(stream, "deleted_at", None) is not None:  # deleted, its history kept: nothing more to watch
        raise NotFound(f"stream {stream_id!r} not found")
    question = body.question.strip()
    if not question or len(question) > settings.question_max_chars:
        raise field_error(("body", "question"), f"must have 1 to {settings.question_max_chars} characters besides "
                          "surrounding white space")
    if alerts_repo.count_stream_alerts(session, stream_id=stream_id) >= settings.alerts_max_per_stream:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the stream already has {settings.alerts_max_per_stream} "
                            "alerts, its maximum (VIDMEM_ALERTS_MAX_PER_STREAM)")
    signing_secret = secrets.token_hex(SECRET_BYTES)
    try:
        alert = alerts_repo.create_alert(
            session, tenant_id=tenant, stream_id=stream_id, question=question, options=body.options,
            fire_on=body.fire_on, every_s=body.every_s, window_s=body.window_s, cooldown_s=body.cooldown_s,
            active=body.active, signing_secret=encrypt_text(signing_secret, settings),
            **_webhook_columns(body.webhook_url, settings),
        )
    except CredentialsUnavailable as exc:  # distributed mode without VIDMEM_SECRET_KEY
        raise HTTPException(status.HTTP_409_CONFLICT, f"alerts cannot keep their signing secret: {exc}") from None
    session.commit()
    return AlertCreated(**alert_public(alert).model_dump(), signing_secret=signing_secret)


@router.get("/streams/{stream_id}/alerts")
def list_stream_alerts(
    stream_id: str, session: SessionDep, tenant: TenantDep, skip: Skip = 0, limit: int = PageLimit
) -> AlertsPublic:
    """A stream's alerts, newest first."""
    alerts_repo.tenant_stream(session, tenant_id=tenant, stream_id=stream_id)
    rows, total = alerts_repo.list_alerts(session, tenant_id=tenant, stream_id=stream_id, skip=skip, limit=limit)
    return AlertsPublic(data=[alert_public(a) for a in rows], count=total, skip=skip, limit=limit)


@router.get("/alerts")
def list_alerts(
    session: SessionDep, tenant: TenantDep, stream_id: str | None = Query(None, max_length=64),
    active: bool | None = Query(None, description="only active (true) or paused (false) alerts"),
    skip: Skip = 0, limit: int = PageLimit,
) -> AlertsPublic:
    """The tenant's alerts across streams (or of one stream), newest first."""
    if stream_id is not None:
        alerts_repo.tenant_stream(session, tenant_id=tenant, stream_id=stream_id)
    rows, total = alerts_repo.list_alerts(session, tenant_id=tenant, stream_id=stream_id, active=active,
                                          skip=skip, limit=limit)
    return AlertsPublic(data=[alert_public(a) for a in rows], count=total, skip=skip, limit=limit)


@router.get("/alerts/{alert_id}")
def read_alert(alert_id: str, session: SessionDep, tenant: TenantDep) -> AlertPublic:
    """One alert with its latest answer."""
    return alert_public(alerts_repo.get_alert(session, tenant_id=tenant, alert_id=alert_id))


@router.patch("/alerts/{alert_id}")
def update_alert(
    alert_id: str, body: AlertUpdate, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> AlertPublic:
    """Pause (``active: false``) or resume an alert, or change its timing or webhook."""
    alert = alerts_repo.get_alert(session, tenant_id=tenant, alert_id=alert_id)
    given = body.model_dump(include=body.model_fields_set)
    try:
        if "webhook_url" in given:
            given.update(_webhook_columns(given.pop("webhook_url"), settings))
    except CredentialsUnavailable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the webhook URL cannot be kept encrypted: {exc}") from None
    for name, value in given.items():
        setattr(alert, name, value)
    session.commit()
    return alert_public(alert)


@router.delete("/alerts/{alert_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_alert(alert_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Delete an alert with its events and their delivery records."""
    alerts_repo.delete_alert(session, tenant_id=tenant, alert_id=alert_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _cursor(cursor: str | None) -> alerts_repo.Cursor | None:
    if cursor is None:
        return None
    try:
        return alerts_repo.Cursor.decode(cursor)
    except alerts_repo.BadCursor as exc:
        raise field_error(("query", "cursor"), str(exc)) from None


CursorQuery = Query(None, max_length=200, description="next_cursor of the previous page")


@router.get("/alerts/{alert_id}/events")
def alert_events(
    alert_id: str, session: SessionDep, tenant: TenantDep, cursor: str | None = CursorQuery, limit: int = PageLimit
) -> EventsPage:
    """An alert's events, newest first, a page at a time (stable while events arrive)."""
    alerts_repo.get_alert(session, tenant_id=tenant, alert_id=alert_id)
    rows, following = alerts_repo.list_events(session, tenant_id=tenant, alert_id=alert_id, after=_cursor(cursor),
                                              limit=limit)
    return EventsPage(data=[EventPublic.of(e) for e in rows], next_cursor=following.encode() if following else None)


@router.get("/events")
def list_events(
    session: SessionDep, tenant: TenantDep, stream_id: str | None = Query(None, max_length=64),
    cursor: str | None = CursorQuery, limit: int = PageLimit,
) -> EventsPage:
    """The tenant's alert events (of one stream, when given), newest first, a page at a time."""
    if stream_id is not None:
        alerts_repo.tenant_stream(session, tenant_id=tenant, stream_id=stream_id)
    rows, following = alerts_repo.list_events(session, tenant_id=tenant, stream_id=stream_id, after=_cursor(cursor),
                                              limit=limit)
    return EventsPage(data=[EventPublic.of(e) for e in rows], next_cursor=following.encode() if following else None)


@router.get("/events/{event_id}")
def read_event(event_id: str, session: SessionDep, tenant: TenantDep) -> EventPublic:
    """One event with its webhook deliveries."""
    return EventPublic.of(alerts_repo.get_event(session, tenant_id=tenant, event_id=event_id))


@router.get(
    "/events/{event_id}/thumbnail.jpg", response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG of the chunk's last frame"}},
)
def event_thumbnail(event_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """The event's thumbnail; 404 when the chunk's frames had expired before the event was stored."""
    jpeg = alerts_repo.event_thumbnail(session, tenant_id=tenant, event_id=event_id)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
