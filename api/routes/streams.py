"""/streams: register a video source, read its status, start and stop it.

Changing and deleting a stream, its memory and latest frame are in ``api.routes.stream_admin``.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, status

from api.deps import RuntimeDep, SessionDep, SettingsDep, Skip, TenantDep, field_error
from api.schemas import StreamCreate, StreamPublic, StreamsPublic
from api.sources import SourceRejected, redact_text, redact_url, register_stream
from api.stream_settings import checked_changes, checked_settings, public_settings
from store import repo
from store.models import Stream, StreamStatus
from workers.runtime import Runtime

router = APIRouter(prefix="/streams", tags=["streams"])


def to_public(session, runtime: Runtime, stream: Stream) -> StreamPublic:  # type: ignore[no-untyped-def]
    size = runtime.memory_store.size(stream.id)
    own, effective = public_settings(stream.settings, runtime.settings)
    return StreamPublic(
        id=stream.id, name=redact_text(stream.name), source=redact_url(stream.source_url), status=stream.status,
        status_reason=redact_text(stream.status_reason) if stream.status_reason else None, active=stream.active,
        stats=stream.stats or {},
        chunks=repo.chunk_counts(session, stream_id=stream.id),
        memory_tokens=size.tokens if size else 0, memory_bytes=size.nbytes if size else 0,
        settings=own, effective_settings=effective, media_epoch=stream.media_epoch, deleted_at=stream.deleted_at,
        created_at=stream.created_at, updated_at=stream.updated_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_stream(
    body: StreamCreate, session: SessionDep, settings: SettingsDep, runtime: RuntimeDep, tenant: TenantDep,
) -> StreamPublic:
    """Register a source; ingest starts at once and the status shows how it goes."""
    own = checked_settings(None, checked_changes(body.settings, settings), settings) if body.settings else None
    if repo.count_streams(session, include_deleted=False) >= settings.max_streams:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"this deployment already has {settings.max_streams} streams, its maximum (VIDMEM_MAX_STREAMS)",
        )
    try:  # checked, redacted and its credentials encrypted before anything is stored
        stream = register_stream(
            session, settings, source=body.source, name=body.name, loop=body.loop, tenant_id=tenant
        )
    except SourceRejected as exc:
        raise field_error(("body", "source"), str(exc)) from None
    stream.settings = own
    session.commit()
    return to_public(session, runtime, stream)


@router.get("")
def list_streams(
    session: SessionDep, runtime: RuntimeDep, tenant: TenantDep, skip: Skip = 0, limit: int = Query(50, ge=1, le=200),
    status_filter: StreamStatus | None = Query(None, alias="status", description="only streams in this status"),
) -> StreamsPublic:
    """Streams newest first, a page at a time (deleted ones left out); ``count`` is how many match over all pages."""
    wanted = status_filter.value if status_filter else None
    streams = repo.list_streams(session, status=wanted, skip=skip, limit=limit, tenant_id=tenant, include_deleted=False)
    return StreamsPublic(
        data=[to_public(session, runtime, s) for s in streams],
        count=repo.count_streams(session, status=wanted, tenant_id=tenant, include_deleted=False),
        skip=skip, limit=limit,
    )


@router.get("/{stream_id}")
def read_stream(stream_id: str, session: SessionDep, runtime: RuntimeDep, tenant: TenantDep) -> StreamPublic:
    """One stream: status, reason, counters, chunk counts, memory size."""
    return to_public(session, runtime, repo.get_stream(session, stream_id, tenant_id=tenant))


@router.post("/{stream_id}/stop")
def stop_stream(stream_id: str, session: SessionDep, runtime: RuntimeDep, tenant: TenantDep) -> StreamPublic:
    """Stop ingesting a stream; its memory and question history stay. Remembered across restarts."""
    stream = repo.get_stream(session, stream_id, tenant_id=tenant)
    stream.active = False
    session.commit()
    return to_public(session, runtime, stream)


@router.post("/{stream_id}/start")  # its 409 is documented on the router
def start_stream(stream_id: str, session: SessionDep, runtime: RuntimeDep, tenant: TenantDep) -> StreamPublic:
    """Start a stopped or failed stream again: same memory and history, chunks continue after the stored ones.

    A running stream is left as it is. An ended stream (a file read to its end) is refused: reading
    it again would add the same video twice to its memory.
    """
    stream = repo.get_stream(session, stream_id, tenant_id=tenant)
    if stream.deleted_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "stream was deleted (its history kept): it cannot start again")
    if stream.status == StreamStatus.ended:
        raise HTTPException(status.HTTP_409_CONFLICT, "stream has ended: its file was read to the end")
    if stream.status in (StreamStatus.stopped, StreamStatus.failed):
        stream.status, stream.status_reason = StreamStatus.connecting, "start requested"
    stream.active = True
    session.commit()
    return to_public(session, runtime, stream)
