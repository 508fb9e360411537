"""Celery tasks of standing questions, on their own queue (``vidmem.alerts``) so they never wait in line
with, or hold up, chunks and questions on a worker that does not take that queue.

Thin like ``workers.tasks``: ids in, one call into ``workers.alerts``, the outcome in the database.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from workers import alerts
from workers.tasks import runtime_of

log = logging.getLogger(__name__)


@shared_task(bind=True, name="vidmem.alerts.evaluate")
def evaluate_alert(self: Task, alert_id: str, seq: int, t_start: float, t_end: float) -> str:
    """Answer alert ``alert_id`` over the recent window ending with chunk ``seq``; store an event if it fires."""
    try:
        return alerts.evaluate(runtime_of(self), alert_id, seq, t_start, t_end)
    except Exception:  # one evaluation lost; the next period evaluates again
        log.exception("alert %s chunk %d: evaluation failed", alert_id, seq)
        return "failed"


@shared_task(bind=True, name="vidmem.alerts.deliver")
def deliver_event(self: Task, event_id: str, attempt: int = 1) -> str:
    """POST event ``event_id`` to its alert's webhook (attempt ``attempt``); the next try is queued with a countdown."""
    rt = runtime_of(self)
    try:
        return alerts.deliver(rt, event_id, attempt)
    except Exception as exc:
        log.exception("event %s webhook attempt %d failed", event_id, attempt)
        alerts.fail_delivery(rt, event_id, attempt, f"{type(exc).__name__}: {exc}")
        return "failed"
