"""Chromium's fake webcam -> the webcam page -> WebRTC -> a WebRTC StreamIngest; prints one JSON line.

Meant to run inside a loopback-only network namespace (the test starts it that way):
    unshare -n sh -c 'ip link set lo up; exec python -m tests.ingest.peers.webcam_roundtrip --workdir DIR'
The page is api/static/webcam.html; a small signalling app stands in for the API, so only ingest
code is under test here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from ingest.entities import Chunk, IngestConfig, StatusEvent
from ingest.runner import StreamIngest
from ingest.webrtc import answer_offer, is_waiting
from tests.ingest.peers.browser import launch_chromium, write_halves_y4m

PAGE = Path(__file__).resolve().parents[3] / "api" / "static" / "webcam.html"


def signalling_app(chunks: list[Chunk], events: list[StatusEvent]) -> FastAPI:
    app = FastAPI()

    @app.get("/webcam")
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.post("/streams/{stream_id}/webrtc")
    async def offer(stream_id: str, body: dict) -> dict:  # type: ignore[type-arg]
        answer = await answer_offer(stream_id, body["sdp"], body["type"])
        return {"sdp": answer.sdp, "type": answer.type, "max_framerate": answer.max_framerate}

    @app.get("/streams/{stream_id}")
    def status(stream_id: str) -> dict:  # type: ignore[type-arg]
        return {"id": stream_id, "status": events[-1].status if events else None, "chunks": len(chunks)}

    return app


def serve(app: FastAPI) -> tuple[uvicorn.Server, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, port


def summary(chunks: list[Chunk], events: list[StatusEvent], ingest: StreamIngest, first_chunk_s: float | None) -> dict:
    def halves(chunk: Chunk) -> list[list[float]]:
        image = chunk.frames[-1].image.astype(float)
        w = image.shape[1]
        return [image[:, : w // 3].reshape(-1, 3).mean(0).round(1).tolist(),
                image[:, -w // 3 :].reshape(-1, 3).mean(0).round(1).tolist()]

    return {
        "chunks": [[c.seq, round(c.t_start, 3), round(c.t_end, 3), len(c.frames)] for c in chunks],
        "halves": [halves(c) for c in chunks],
        "statuses": [str(e.status) for e in events],
        "first_chunk_s": first_chunk_s,
        "stats": ingest.stats(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=40.0)
    args = parser.parse_args()
    chunks: list[Chunk] = []
    events: list[StatusEvent] = []
    config = IngestConfig(sample_fps=4.0, chunk_seconds=1.0, frame_size=48, ice_hosts=("127.0.0.1",))
    ingest = StreamIngest("cam", "webrtc://cam", config, chunks.append, events.append)
    ingest.start()
    while not is_waiting("cam"):
        time.sleep(0.05)
    server, port = serve(signalling_app(chunks, events))
    y4m = write_halves_y4m(args.workdir / "halves.y4m")
    t0 = time.monotonic()
    browser = launch_chromium(f"http://127.0.0.1:{port}/webcam?stream=cam&autostart=1", y4m,
                              args.workdir / "profile", args.workdir / "chromium.log")
    first: float | None = None
    try:
        while len(chunks) < args.chunks and time.monotonic() - t0 < args.timeout:
            if chunks and first is None:
                first = round(time.monotonic() - t0, 2)
            time.sleep(0.05)
    finally:
        browser.kill()
        browser.wait(10)
        ingest.stop()
        ingest.join(10)
        server.should_exit = True
    print(json.dumps(summary(chunks, events, ingest, first)))


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
