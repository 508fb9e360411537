"""/streams/{id}: change a stream's name and settings, delete it, inspect its memory, see its latest frame."""

from __future__ import annotations

import logging
from enum import StrEnum

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import Response
from sqlalchemy import delete, func, select, update

from api.deps import RuntimeDep, SessionDep, SettingsDep, TenantDep
from api.routes.streams import to_public
from api.schemas import MemoryPublic, StreamDeleted, StreamPublic, StreamUpdate
from api.sources import redact_text
from api.stream_settings import checked_changes, checked_settings
from store import repo
from store.models import ChunkRecord, ChunkStatus, MemorySnapshot, Question, utcnow
from workers import latest_frame, memory_view
from workers.runtime import Runtime

log = logging.getLogger(__name__)

router = APIRouter(prefix="/streams", tags=["streams"])


class History(StrEnum):
    keep = "keep"
    delete = "delete"


@router.patch("/{stream_id}")
def update_stream(
    stream_id: str, body: StreamUpdate, session: SessionDep, settings: SettingsDep, runtime: RuntimeDep,
    tenant: TenantDep,
) -> StreamPublic:
    """Rename a stream or change its settings (null: back to the deployment default).

    Sampling and chunking restart the stream's ingest with the new values within a second; a new
    stage-1 spec or memory budget applies from the next chunk on (the memory consolidates to the
    new budget then; tokens already held stay as they were compressed); stage 2 and the LLM
    budget apply to the next question.
    """
    stream = repo.get_stream(session, stream_id, tenant_id=tenant)
    if stream.deleted_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "stream was deleted (its history kept): it cannot change")
    if body.settings is not None:
        stream.settings = checked_settings(stream.settings, checked_changes(body.settings, settings), settings)
    if body.name is not None:
        stream.name = redact_text(body.name)
    session.commit()
    return to_public(session, runtime, stream)


@router.delete("/{stream_id}")
def delete_stream(
    stream_id: str, session: SessionDep, runtime: RuntimeDep, tenant: TenantDep,
    history: History = Query(..., description="'keep': stop the stream and hide it, its questions stay browsable; "
                             "'delete': remove the stream with its questions, chunks and alerts"),
) -> StreamDeleted:
    """Delete a stream, keeping or removing its question history: the choice is required (422 without it).

    Either way ingest stops, and its memory, latest frame and unprocessed frames are freed. To only
    pause a stream use ``POST /streams/{id}/stop``.
    """
    stream = repo.get_stream(session, stream_id, tenant_id=tenant)
    pending = list(session.scalars(select(ChunkRecord.blob_key).where(
        ChunkRecord.stream_id == stream_id, ChunkRecord.status == ChunkStatus.pending)))
    if history is History.delete:
        questions = repo.delete_stream_rows(session, stream_id=stream_id)
    else:
        questions = session.scalar(select(func.count()).select_from(Question).where(Question.stream_id == stream_id))
        stream.active, stream.deleted_at = False, stream.deleted_at or utcnow()
        session.execute(update(ChunkRecord).where(ChunkRecord.stream_id == stream_id,
                                                  ChunkRecord.status == ChunkStatus.pending)
                        .values(status=ChunkStatus.dropped, error="dropped: stream deleted"))
        session.execute(delete(MemorySnapshot).where(MemorySnapshot.stream_id == stream_id))
    session.commit()  # rows first: a worker that finds no pending chunk leaves the memory alone
    _free_storage(runtime, stream_id, pending)
    return StreamDeleted(id=stream_id, history=history.value, questions=questions or 0)


def _free_storage(runtime: Runtime, stream_id: str, blob_keys: list[str]) -> None:
    """Memory, latest frame and unprocessed frames of a deleted stream; what fails here housekeeping or TTLs take."""
    try:
        runtime.memory_store.delete(stream_id)
        latest_frame.forget(runtime, stream_id)
        for key in blob_keys:
            runtime.blobs.delete(key)
    except Exception:
        log.warning("stream %s deleted, but not all of its stored memory and frames could be removed", stream_id,
                    exc_info=True)


@router.get("/{stream_id}/memory")
def read_memory(
    stream_id: str, session: SessionDep, runtime: RuntimeDep, tenant: TenantDep,
    limit: int = Query(500, ge=1, le=5000, description="applied chunks in the timeline, the newest"),
) -> MemoryPublic:
    """The stream's memory now: tokens and bytes against its budget, the stream time it covers (wall-clock
    when the stream's media epoch is known), tokens per minute, and per applied chunk the tokens still held."""
    stream = repo.get_stream(session, stream_id, tenant_id=tenant)
    return MemoryPublic(**memory_view.inspect(runtime, session, stream, limit=limit))


JPEG = {"description": "the newest sampled frame, a small JPEG", "content": {"image/jpeg": {}}}


@router.get("/{stream_id}/frame.jpg", response_class=Response, responses={200: JPEG})
def read_latest_frame(stream_id: str, session: SessionDep, runtime: RuntimeDep, tenant: TenantDep) -> Response:
    """The stream's newest sampled frame (320 px on its longer side); 404 until ingest has sampled one."""
    repo.get_stream(session, stream_id, tenant_id=tenant)
    data = latest_frame.get(runtime, stream_id)
    if data is None:
        raise repo.NotFound(f"stream {stream_id!r} has no frame yet")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
