"""/streams: register a video source, read its status."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from api.deps import RuntimeDep, SessionDep, SettingsDep, Writer
from api.schemas import StreamCreate, StreamPublic, StreamsPublic
from api.sources import SourceRejected, check_source, redact_url
from store import repo
from store.models import Stream
from workers.runtime import Runtime

router = APIRouter(prefix="/streams", tags=["streams"])


def to_public(session, runtime: Runtime, stream: Stream) -> StreamPublic:  # type: ignore[no-untyped-def]
    size = runtime.memory_store.size(stream.id)
    return StreamPublic(
        id=stream.id, name=stream.name, source=redact_url(stream.source_url), status=stream.status,
        status_reason=stream.status_reason, active=stream.active, stats=stream.stats or {},
        chunks=repo.chunk_counts(session, stream_id=stream.id),
        memory_tokens=size.tokens if size else 0, memory_bytes=size.nbytes if size else 0,
        created_at=stream.created_at, updated_at=stream.updated_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Writer])
def create_stream(body: StreamCreate, session: SessionDep, settings: SettingsDep, runtime: RuntimeDep) -> StreamPublic:
    """Register a source; ingest starts at once and the status shows how it goes."""
    try:
        source = check_source(body.source, settings)
    except SourceRejected as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    stream = repo.create_stream(
        session, name=body.name or redact_url(source), source_url=source, loop=body.loop
    )
    session.commit()
    return to_public(session, runtime, stream)


@router.get("")
def list_streams(session: SessionDep, runtime: RuntimeDep) -> StreamsPublic:
    """All streams, newest first."""
    streams = repo.list_streams(session)
    return StreamsPublic(data=[to_public(session, runtime, s) for s in streams], count=len(streams))


@router.get("/{stream_id}")
def read_stream(stream_id: str, session: SessionDep, runtime: RuntimeDep) -> StreamPublic:
    """One stream: status, reason, counters, chunk counts, memory size."""
    return to_public(session, runtime, repo.get_stream(session, stream_id))


@router.delete("/{stream_id}", dependencies=[Writer])
def stop_stream(stream_id: str, session: SessionDep, runtime: RuntimeDep) -> StreamPublic:
    """Stop ingesting a stream; its memory and question history stay."""
    stream = repo.get_stream(session, stream_id)
    stream.active = False
    session.commit()
    return to_public(session, runtime, stream)
