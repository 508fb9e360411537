"""Thin Celery tasks: ids in, one service call, outcome in the database.

Every task is named ``vidmem.<area>.<task>``, idempotent, acked late and time-limited (app
config). Expected, transient conditions retry with a short countdown; anything else fails the
row with the error so that nothing is lost silently.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from workers import services
from workers.runtime import Runtime

log = logging.getLogger(__name__)

RETRY_ON = (services.NotReadyYet, services.ConcurrentUpdate)


def runtime_of(task: Task) -> Runtime:
    """One Runtime per worker process, built from the settings the app was created with."""
    app = task.app
    runtime = getattr(app, "vidmem_runtime", None)
    if runtime is None:
        runtime = Runtime(app.vidmem_settings)  # type: ignore[attr-defined]
        app.vidmem_runtime = runtime  # type: ignore[attr-defined]
    return runtime


@shared_task(bind=True, name="vidmem.chunks.process", max_retries=200)
def process_chunk(self: Task, stream_id: str, seq: int) -> str:
    """Apply chunk ``seq`` of ``stream_id`` to the stream's memory (exactly once, in order)."""
    rt = runtime_of(self)
    try:
        return services.apply_chunk(rt, stream_id, seq)
    except RETRY_ON as exc:
        raise self.retry(exc=exc, countdown=0.2) from exc
    except Exception as exc:
        log.exception("stream %s chunk %d failed", stream_id, seq)
        services.fail_chunk(rt, stream_id, seq, f"{type(exc).__name__}: {exc}")
        return "failed"


@shared_task(bind=True, name="vidmem.questions.answer")
def answer_question(self: Task, question_id: str) -> str:
    """Answer question ``question_id`` over its stream's memory."""
    rt = runtime_of(self)
    try:
        return services.answer_question(rt, question_id)
    except Exception as exc:
        log.exception("question %s failed", question_id)
        services.fail_question(rt, question_id, f"{type(exc).__name__}: {exc}")
        return "failed"
