"""Thin Celery tasks: ids in, one service call, outcome in the database.

Every task is named ``vidmem.<area>.<task>``, idempotent, acked late and time-limited (app
config). Nothing retries for ordering: a chunk task runs only when its stream's chain
(``workers.chain``) hands it the stream's next chunk, and queues the one after when done.
A failure fails the row with the error so that nothing is lost silently.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from workers import chain, services
from workers.runtime import Runtime

log = logging.getLogger(__name__)

CAS_TRIES = 3  # a memory changed under us (a takeover raced this worker): reload and look again


def runtime_of(task: Task) -> Runtime:
    """One Runtime per worker process, built from the settings the app was created with."""
    app = task.app
    runtime = getattr(app, "vidmem_runtime", None)
    if runtime is None:
        runtime = Runtime(app.vidmem_settings, role="worker")  # type: ignore[attr-defined]
        app.vidmem_runtime = runtime  # type: ignore[attr-defined]
    return runtime


@shared_task(bind=True, name="vidmem.chunks.process")
def process_chunk(self: Task, stream_id: str, seq: int, token: int | None = None) -> str:
    """Apply the next chunk of ``stream_id`` (``seq`` when queued) and hand the stream's chain on.

    ``token`` is the stream's lease token when the task was queued; a duplicate or stale delivery
    finds another token (or the chain running on a live worker) and does nothing.
    """
    rt, me = runtime_of(self), chain.worker_id()
    claim = chain.claim_stream(rt, stream_id, token, me)
    if isinstance(claim, str):
        log.info("stream %s chunk %d: nothing to do (%s)", stream_id, seq, claim)
        return claim
    try:
        return apply_claimed(rt, stream_id, claim.seq)
    finally:
        chain.release_stream(rt, stream_id, claim.token, me)


def apply_claimed(rt: Runtime, stream_id: str, seq: int) -> str:
    """Apply a claimed chunk, on the way to the encoder from the claim on.

    Loading the memory and the frames takes a while; meanwhile a batch another thread of this
    worker is collecting waits for this chunk (at most ``encode_wait_ms``), so batches fill. With
    one task at a time (the default solo pool) nothing waits.
    """
    with rt.encoder.expecting():
        return _apply(rt, stream_id, seq)


def _apply(rt: Runtime, stream_id: str, seq: int) -> str:
    for _ in range(CAS_TRIES):
        try:
            return services.apply_chunk(rt, stream_id, seq)
        except services.ConcurrentUpdate:
            log.warning("stream %s chunk %d: memory changed meanwhile; looking again", stream_id, seq)
        except Exception as exc:
            log.exception("stream %s chunk %d failed", stream_id, seq)
            services.fail_chunk(rt, stream_id, seq, f"{type(exc).__name__}: {exc}")
            return "failed"
    return "memory kept changing: left to the worker that changes it"


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
