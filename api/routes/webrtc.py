"""WebRTC: ``POST /streams/{id}/webrtc`` answers a browser's SDP offer; ``GET /webcam`` is the page.

The stream (``webrtc://<id>``) is created on the first offer if it does not exist. Its ingest is
started by the ingest manager like any other stream, in whichever process runs ingest, and
receives the offer through ``workers.signaling`` (Redis in split deployments, in process under
``vidmem serve`` without Redis), found by the stream's id in the path and never by the name in a
stored ``webrtc://`` URL. When no ingest takes the offer in time the answer is 503, and a stream
this request created is removed again: it never stays ``connecting`` with nothing to run it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep, TenantDep
from ingest.sources import WEBRTC_PREFIX
from store import repo
from store.db import session_scope
from store.models import ChunkRecord, Stream, StreamStatus
from store.repo import NotFound
from workers.runtime import Runtime
from workers.signaling import NoIngest, OfferFailed, relay_offer

router = APIRouter(tags=["webrtc"])

PAGE = Path(__file__).resolve().parent.parent / "static" / "webcam.html"
STREAM_ID = r"^[A-Za-z0-9_-]{1,32}$"
FINAL = {StreamStatus.ended, StreamStatus.failed, StreamStatus.stopped}


class WebRTCOffer(BaseModel):
    sdp: str = Field(min_length=1, max_length=200_000)
    type: Literal["offer"] = "offer"


class WebRTCAnswer(BaseModel):
    stream_id: str
    sdp: str
    type: str
    max_framerate: float = Field(description="frames per second the browser need send")


@router.get("/webcam", response_class=HTMLResponse, include_in_schema=False)
def webcam_page(stream: str | None = None, autostart: bool = False) -> HTMLResponse:  # noqa: ARG001
    """The page that streams this browser's webcam; its script reads ``stream`` (the id to publish as) and
    ``autostart`` (start without a click) from the address, declared here so that they are known parameters."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


@router.post("/streams/{stream_id}/webrtc")
async def webrtc_offer(stream_id: str, offer: WebRTCOffer, runtime: RuntimeDep, tenant: TenantDep) -> WebRTCAnswer:
    """Answer a browser's SDP offer; its webcam becomes the stream's video (created if new)."""
    if not _valid_id(stream_id):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"stream id must match {STREAM_ID}")
    created = await run_in_threadpool(_ensure_webrtc_stream, runtime, stream_id, tenant)
    try:
        answer = await relay_offer(runtime, stream_id, offer.sdp, offer.type)
    except NoIngest as exc:
        if created:
            await run_in_threadpool(_remove_unstarted_stream, runtime, stream_id)
        raise HTTPException(exc.status, str(exc)) from exc
    except OfferFailed as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return WebRTCAnswer(stream_id=stream_id, sdp=answer.sdp, type=answer.type, max_framerate=answer.max_framerate)


def _valid_id(stream_id: str) -> bool:
    return re.fullmatch(STREAM_ID, stream_id) is not None


def _ensure_webrtc_stream(runtime: Runtime, stream_id: str, tenant: str) -> bool:
    """Create ``webrtc://<id>`` for ``tenant`` if new (True); refuse streams with another source or already finished.

    Another tenant's stream at this id is 404, as for any other route (the id stays taken, so that
    tenant cannot create it either).

    Any ``webrtc://`` stream takes offers at its own id, whatever name its URL holds (older versions let
    ``POST /streams`` register ``webrtc://<name>``, which then could be fed only through another stream's path).
    """
    with session_scope(runtime.sessions) as session:
        stream = session.get(Stream, stream_id)
        if stream is not None and stream.tenant_id != tenant:
            raise NotFound(f"stream {stream_id!r} not found")
        if stream is None:
            if repo.count_streams(session) >= runtime.settings.max_streams:
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    f"this deployment already has {runtime.settings.max_streams} streams, its maximum "
                    "(VIDMEM_MAX_STREAMS)",
                ) from None
            session.add(Stream(id=stream_id, name=f"webcam {stream_id}", source_url=f"webrtc://{stream_id}",
                               status=StreamStatus.connecting, stats={}, tenant_id=tenant))
            return True
        if not stream.source_url.startswith(WEBRTC_PREFIX):
            raise HTTPException(status.HTTP_409_CONFLICT, f"stream {stream_id!r} is not a WebRTC stream")
        if not stream.active or stream.status in FINAL:
            raise HTTPException(status.HTTP_409_CONFLICT, f"stream {stream_id!r} is {stream.status}")
    return False


def _remove_unstarted_stream(runtime: Runtime, stream_id: str) -> None:
    """Delete the stream this request created when nothing ran it: no chunk, no question, no ingest.

    An ingest that starts it after all finds its row gone and stops it (``IngestManager.sync``);
    the next offer to the same id creates it afresh.
    """
    with session_scope(runtime.sessions) as session:
        stream = session.get(Stream, stream_id)
        has_chunks = session.query(ChunkRecord.seq).filter(ChunkRecord.stream_id == stream_id).first() is not None
        if stream is None or has_chunks or repo.list_questions(session, stream_id=stream_id, limit=1)[1]:
            return
        session.delete(stream)
