"""POST /streams/{id}/webrtc through the real API and ingest manager, with an aiortc peer as the browser."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from fastapi.testclient import TestClient

from api.main import create_app
from store.db import session_scope
from store.models import ChunkRecord
from tests.ingest.peers.webcam_track import HalvesTrack
from workers.app import create_celery
from workers.ingest_manager import IngestManager
from workers.runtime import Runtime


class LoopThread:
    """An event loop in a thread, for a peer connection that must outlive one call."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 20.0):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def service(settings) -> Iterator[tuple[TestClient, Runtime]]:  # type: ignore[no-untyped-def]
    """The API and the ingest manager in one process, as ``vidmem serve`` runs them (no worker)."""
    settings.ensure_dirs()
    create_celery(settings)
    runtime = Runtime(settings, auto_upgrade=True)
    manager = IngestManager(runtime, poll_seconds=0.1)
    manager.start()
    with TestClient(create_app(runtime)) as client:
        yield client, runtime
    manager.stop()


async def _offer(pc: RTCPeerConnection) -> dict[str, str]:
    pc.addTrack(HalvesTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}


def _chunk_rows(runtime: Runtime, stream_id: str) -> list[tuple[int, float, float, int]]:
    with session_scope(runtime.sessions) as session:
        rows = session.query(ChunkRecord).filter(ChunkRecord.stream_id == stream_id).order_by(ChunkRecord.seq)
        return [(r.seq, r.t_start, r.t_end, r.num_frames) for r in rows]


@pytest.mark.slow
def test_webrtc_offer_when_peer_streams_creates_stream_and_records_chunks(service):
    client, runtime = service
    peers = LoopThread()
    pc = RTCPeerConnection()
    try:
        # when a browser-like peer posts its offer for a new stream id
        response = client.post("/streams/desk-cam/webrtc", json=peers.run(_offer(pc)))
        # then the API answers, and the stream exists as a WebRTC stream
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["type"] == "answer" and answer["stream_id"] == "desk-cam" and answer["max_framerate"] > 0
        peers.run(pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])))
        # and its video becomes chunks recorded for the stream, in order
        deadline = time.monotonic() + 30
        while len(_chunk_rows(runtime, "desk-cam")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = _chunk_rows(runtime, "desk-cam")
        assert len(rows) >= 2 and [r[0] for r in rows] == list(range(len(rows))), rows
        stream = client.get("/streams/desk-cam").json()
        assert stream["status"] == "live" and stream["source"] == "webrtc://desk-cam", stream
    finally:
        peers.run(pc.close())
        peers.close()


def test_webrtc_offer_when_stream_is_not_webrtc_is_a_conflict(service, make_h264, tmp_path):
    client, _ = service
    stream_id = client.post("/streams", json={"source": str(make_h264(tmp_path / "a.mp4", seconds=1.0))}).json()["id"]
    response = client.post(f"/streams/{stream_id}/webrtc", json={"sdp": "v=0", "type": "offer"})
    assert response.status_code == 409 and "not a WebRTC stream" in response.json()["detail"]


def test_webrtc_offer_when_id_is_invalid_is_rejected(service):
    client, _ = service
    response = client.post("/streams/bad%20id!/webrtc", json={"sdp": "v=0", "type": "offer"})
    assert response.status_code == 422


def test_webcam_page_when_requested_is_served(service):
    client, _ = service
    response = client.get("/webcam")
    assert response.status_code == 200 and "RTCPeerConnection" in response.text
