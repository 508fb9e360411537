"""The work behind the alert tasks: answer a standing question on one chunk, deliver a fired event's webhook.

An evaluation answers the alert's question over the memory's recent window (``window_s`` up to the
chunk's end) through the same pipeline and model as questions: ``StreamMemory.load`` ->
``Memory.window`` -> ``Pipeline.choose`` (stage 2, question-aware). It then scores each option's text as
the answer continuation (``VideoLLM.option_loglikelihoods``) instead of generating and parsing words:
the decision is always one of the options (a generated "Yes, a red ..." or an untrained model's
babble cannot be misread), costs one forward pass, and the scores are kept with the event.

Both are idempotent: an answer is recorded at most once per alert and chunk (``record_answer``), an
event at most once (unique (alert, seq)), a webhook attempt at most once (unique (event, attempt)).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from celery import current_app
from sqlalchemy.exc import IntegrityError

from store import alerts as alerts_repo
from store.credentials import decrypt_text
from store.db import session_scope
from store.models import Alert, AlertEvent, Stream, utcnow
from workers import stream_settings, webhooks
from workers.alert_schedule import DELIVER_TASK, thumbnail_key
from workers.runtime import Runtime
from workers.services import StreamMemory

log = logging.getLogger(__name__)

OPTIONS_INSTRUCTION = "Answer with one option."  # the word-answer prompt vidmem-tiny v2 was trained on


def alert_prompt(question: str, options: Sequence[str]) -> str:
    """The question as the model reads it, options listed (bench.questions.Question.prompt's format)."""
    return f"{question}\nOptions: {', '.join(options)}.\n{OPTIONS_INSTRUCTION}"


def decide(options: Sequence[str], fire_on: Sequence[str], scores: torch.Tensor) -> tuple[str, bool]:
    """The likeliest option (ties: the first listed) and whether it is one the alert fires on."""
    if scores.shape != (len(options),):
        raise ValueError(f"{len(options)} options but scores of shape {list(scores.shape)}")
    picked = options[int(torch.argmax(scores))]
    return picked, picked in fire_on


@dataclass(frozen=True)
class Standing:
    """What an evaluation needs of an alert and its stream, read once."""

    alert_id: str
    tenant_id: str
    stream_id: str
    question: str
    options: list[str]
    fire_on: list[str]
    window_s: float
    webhook: bool
    media_epoch: Any  # datetime | None


def evaluate(rt: Runtime, alert_id: str, seq: int, t_start: float, t_end: float) -> str:
    """Answer alert ``alert_id`` on chunk ``seq`` [t_start, t_end]; store an event when it fires."""
    standing = _read(rt, alert_id, seq)
    if isinstance(standing, str):
        return standing
    tokens = StreamMemory.load(rt, standing.stream_id).memory.window(max(0.0, t_end - standing.window_s), t_end)
    if len(tokens) == 0:
        with session_scope(rt.sessions) as session:
            alerts_repo.record_answer(session, alert_id=alert_id, seq=seq, answer=None, fired_t=None)
        return "no video in the window"
    prompt = alert_prompt(standing.question, standing.options)
    model = rt.model
    selected = stream_settings.pipeline_for(rt, standing.stream_id).choose(tokens, prompt, model)  # as questions
    scores = model.option_loglikelihoods(prompt, selected, standing.options)
    picked, fired = decide(standing.options, standing.fire_on, scores)
    event_id = _record(rt, standing, seq, (t_start, t_end), picked, fired,
                       {o: float(s) for o, s in zip(standing.options, scores, strict=True)})
    if event_id is None:
        return "answered by another delivery"
    log.info("alert %s chunk %d: %r over %d/%d tokens, %s", alert_id, seq, picked, len(selected), len(tokens),
             "fired" if fired else "quiet")
    if event_id and standing.webhook:
        current_app.send_task(DELIVER_TASK, args=[event_id, 1])
    return "fired" if fired else "quiet"


def _read(rt: Runtime, alert_id: str, seq: int) -> Standing | str:
    with session_scope(rt.sessions) as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            return "alert deleted"
        if not alert.active:
            return "alert paused"
        if alert.last_answered_seq is not None and alert.last_answered_seq >= seq:
            return "already answered"
        stream = session.get(Stream, alert.stream_id)
        return Standing(
            alert.id, alert.tenant_id, alert.stream_id, alert.question, list(alert.options), list(alert.fire_on),
            alert.window_s, alert.webhook_url is not None, stream.media_epoch if stream else None,
        )


def _record(rt: Runtime, standing: Standing, seq: int, times: tuple[float, float], answer: str, fired: bool,
            scores: dict[str, float]) -> str | None:
    """Record the answer (and the event when it fired) in one transaction: the event's id, "" if quiet, None if
    another delivery recorded this chunk first."""
    t_start, t_end = times
    thumbnail = rt.blobs.get(thumbnail_key(standing.stream_id, seq)) if fired else None
    epoch = standing.media_epoch
    try:
        with session_scope(rt.sessions) as session:
            if not alerts_repo.record_answer(session, alert_id=standing.alert_id, seq=seq, answer=answer,
                                             fired_t=t_end if fired else None):
                return None
            if not fired:
                return ""
            event = AlertEvent(
                alert_id=standing.alert_id, tenant_id=standing.tenant_id, stream_id=standing.stream_id, seq=seq,
                t_start=t_start, t_end=t_end, answer=answer, scores=scores, thumbnail=thumbnail,
                wall_start=epoch + timedelta(seconds=t_start) if epoch else None,
                wall_end=epoch + timedelta(seconds=t_end) if epoch else None,
                delivery_status="pending" if standing.webhook else "none",
            )
            session.add(event)
            session.flush()
            return event.id
    except IntegrityError:  # the event of this chunk exists (a duplicate raced past the answer check)
        return None


# ---------------------------------------------------------------------------------------------- webhooks


def deliver(rt: Runtime, event_id: str, attempt: int) -> str:
    """Try attempt ``attempt`` of the event's webhook, record it, and queue the next try after a backoff."""
    target = _delivery_target(rt, event_id, attempt)
    if isinstance(target, str):
        return target
    url, secret, payload = target
    sent_at = utcnow()
    outcome = webhooks.post(url, webhooks.encode_body({**payload, "attempt": attempt}, sent_at), secret=secret,
                            sent_at=sent_at, event_id=event_id, settings=rt.settings)
    settings = rt.settings
    retry = not outcome.ok and not outcome.permanent and attempt < settings.alert_webhook_attempts
    wait = webhooks.backoff_s(attempt, settings) if retry else None
    try:
        with session_scope(rt.sessions) as session:
            alerts_repo.record_delivery(
                session, event_id=event_id, attempt=attempt, status_code=outcome.status_code, error=outcome.error,
                attempted_at=sent_at, duration_ms=outcome.duration_ms,
                next_retry_at=sent_at + timedelta(seconds=wait) if wait is not None else None,
                delivered_at=utcnow() if outcome.ok else None,
            )
            event = session.get(AlertEvent, event_id)
            if event is not None:
                event.delivery_status = "delivered" if outcome.ok else "pending" if retry else "failed"
    except IntegrityError:
        return f"attempt {attempt} already recorded"
    if wait is not None:
        current_app.send_task(DELIVER_TASK, args=[event_id, attempt + 1], countdown=wait)
    log.log(logging.INFO if outcome.ok else logging.WARNING, "event %s webhook attempt %d: %s", event_id, attempt,
            "delivered" if outcome.ok else outcome.error)
    return "delivered" if outcome.ok else f"failed ({outcome.error}); retry in {wait} s" if retry else "given up"


def _delivery_target(rt: Runtime, event_id: str, attempt: int) -> tuple[str, str, dict[str, Any]] | str:
    """The URL, the signing secret and the payload of an event to deliver; or why there is nothing to do."""
    with session_scope(rt.sessions) as session:
        event = session.get(AlertEvent, event_id)
        if event is None:
            return "event deleted"
        if event.delivery_status in ("delivered", "failed") or any(d.attempt >= attempt for d in event.deliveries):
            return f"attempt {attempt} already made ({event.delivery_status})"
        alert, stream = session.get(Alert, event.alert_id), session.get(Stream, event.stream_id)
        if alert is None or stream is None or alert.webhook_url is None:
            event.delivery_status = "none"
            return "no webhook"
        url = decrypt_text(alert.webhook_url_secret, rt.settings) if alert.webhook_url_secret else alert.webhook_url
        return url, decrypt_text(alert.signing_secret, rt.settings), event_payload(alert, event, stream)


def event_payload(alert: Alert, event: AlertEvent, stream: Stream) -> dict[str, Any]:
    """The JSON a webhook receives (no secrets, no URL: the redacted stream name and ids only)."""
    from ingest.sources import redact_text

    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "type": "alert.fired",
        "alert": {"id": alert.id, "question": alert.question, "options": alert.options, "fire_on": alert.fire_on},
        "stream": {"id": stream.id, "name": redact_text(stream.name)},
        "event": {
            "id": event.id, "seq": event.seq, "t_start": event.t_start, "t_end": event.t_end,
            "wall_start": when(event.wall_start), "wall_end": when(event.wall_end), "answer": event.answer,
            "scores": event.scores, "created_at": when(event.created_at),
            "thumbnail": f"/events/{event.id}/thumbnail.jpg" if event.has_thumbnail else None,
        },
    }


def fail_delivery(rt: Runtime, event_id: str, attempt: int, error: str) -> None:
    """An attempt that broke before its POST (a secret that cannot be decrypted, a bug): recorded, given up."""
    try:
        with session_scope(rt.sessions) as session:
            alerts_repo.record_delivery(session, event_id=event_id, attempt=attempt, error=error[:500])
            event = session.get(AlertEvent, event_id)
            if event is not None:
                event.delivery_status = "failed"
    except IntegrityError:
        pass
