"""POST /streams/{id}/webrtc through the real API and ingest manager, with an aiortc peer as the browser."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from fastapi.testclient import TestClient

from ingest.webrtc import is_waiting
from store.db import session_scope
from store.models import ChunkRecord, Stream, StreamStatus
from tests.ingest.peers.webcam_track import HalvesTrack
from tests.workers.cluster import served_client
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
    with served_client(settings, worker=False) as (client, runtime, _):
        yield client, runtime


def _peer() -> RTCPeerConnection:
    """The test's browser: no STUN server (aiortc's default would query a public one)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


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
    pc = _peer()
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


def _wait_for_chunks(runtime: Runtime, stream_id: str, count: int, timeout: float = 30.0) -> list:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while len(_chunk_rows(runtime, stream_id)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return _chunk_rows(runtime, stream_id)


def _insert_webrtc_stream(runtime: Runtime, stream_id: str, source_url: str) -> None:
    """A row as older versions let ``POST /streams`` store it: a webrtc:// URL naming another stream."""
    with session_scope(runtime.sessions) as session:
        session.add(Stream(id=stream_id, name=stream_id, source_url=source_url, status=StreamStatus.connecting,
                           stats={}))


def _stream_row(runtime: Runtime, stream_id: str) -> tuple[str, str | None, dict]:  # type: ignore[type-arg]
    with session_scope(runtime.sessions) as session:
        stream = session.get(Stream, stream_id)
        assert stream is not None
        return stream.status, stream.status_reason, dict(stream.stats or {})


def _stream_webcam(client: TestClient, peers: LoopThread, pc: RTCPeerConnection, stream_id: str) -> dict:  # type: ignore[type-arg]
    response = client.post(f"/streams/{stream_id}/webrtc", json=peers.run(_offer(pc)))
    assert response.status_code == 200, response.text
    answer = response.json()
    peers.run(pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])))
    return answer


@pytest.mark.slow
def test_webrtc_offer_when_another_stream_is_registered_under_its_name_feeds_only_the_id(service):
    client, runtime = service
    # given stream "legacy" registered as webrtc://camA, its ingest waiting for a browser
    _insert_webrtc_stream(runtime, "legacy", "webrtc://camA")
    deadline = time.monotonic() + 10
    while not is_waiting("legacy") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert is_waiting("legacy")
    peers, pc = LoopThread(), _peer()
    try:
        # when a browser posts its offer to /streams/camA/webrtc and streams
        answer = _stream_webcam(client, peers, pc, "camA")
        # then stream camA is created and records the video
        assert answer["stream_id"] == "camA"
        assert len(_wait_for_chunks(runtime, "camA", 2)) >= 2
        assert client.get("/streams/camA").json()["source"] == "webrtc://camA"
        # and the stream registered as webrtc://camA received nothing: no chunk, no connection, still waiting
        assert _chunk_rows(runtime, "legacy") == []
        status, reason, stats = _stream_row(runtime, "legacy")
        assert status == StreamStatus.connecting and "waiting for a browser" in (reason or ""), (status, reason)
        assert stats.get("connects", 0) == 0 and stats.get("frames_read", 0) == 0, stats
    finally:
        peers.run(pc.close())
        peers.close()


@pytest.mark.slow
def test_webrtc_offer_when_stream_url_names_another_id_reaches_it_by_its_id(service):
    client, runtime = service
    # given stream "legacy" registered (by an older version's POST /streams) as webrtc://camA
    _insert_webrtc_stream(runtime, "legacy", "webrtc://camA")
    peers, pc = LoopThread(), _peer()
    try:
        # when a browser posts its offer to the stream's own id
        answer = _stream_webcam(client, peers, pc, "legacy")
        # then that stream receives the video, and no stream camA was made
        assert answer["stream_id"] == "legacy"
        assert len(_wait_for_chunks(runtime, "legacy", 2)) >= 2
        assert client.get("/streams/camA").status_code == 404
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
