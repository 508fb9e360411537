"""Chromium's fake webcam -> the webcam page -> WebRTC -> a WebRTC StreamIngest; prints one JSON line.

Meant to run inside a loopback-only network namespace (the test starts it that way):
    unshare -n sh -c 'ip link set lo up; exec python -m tests.ingest.peers.webcam_roundtrip --workdir DIR'
The page is api/static/webcam.html. By default a small signalling app stands in for the API, so
only ingest code is under test; ``--api`` goes through the real API route and ingest manager.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from ingest.entities import Chunk, IngestConfig, StatusEvent
from ingest.runner import StreamIngest
from ingest.webrtc import answer_offer, is_waiting, use_ice_hosts
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


def summary(chunks: list[Chunk], events: list[StatusEvent], ingest: StreamIngest, seconds: float | None) -> dict:
    def halves(chunk: Chunk) -> list[list[float]]:
        image = chunk.frames[-1].image.astype(float)
        w = image.shape[1]
        return [image[:, : w // 3].reshape(-1, 3).mean(0).round(1).tolist(),
                image[:, -w // 3 :].reshape(-1, 3).mean(0).round(1).tolist()]

    return {
        "chunks": [[c.seq, round(c.t_start, 3), round(c.t_end, 3), len(c.frames)] for c in chunks],
        "halves": [halves(c) for c in chunks],
        "statuses": [str(e.status) for e in events],
        "seconds": seconds,
        "stats": ingest.stats(),
    }


def run_browser(port: int, workdir: Path, enough: Callable[[], bool], timeout: float) -> float | None:
    """Chromium streams its fake webcam from the page until ``enough()``; seconds to the first chunk."""
    y4m = write_halves_y4m(workdir / "halves.y4m")
    t0 = time.monotonic()
    browser = launch_chromium(f"http://127.0.0.1:{port}/webcam?stream=cam&autostart=1", y4m,
                              workdir / "profile", workdir / "chromium.log")
    try:
        while not enough() and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
        return round(time.monotonic() - t0, 2)
    finally:
        browser.kill()
        browser.wait(10)


def with_signalling_app(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """Only ingest code: a webrtc:// StreamIngest and a stand-in for the API's route."""
    chunks: list[Chunk] = []
    events: list[StatusEvent] = []
    config = IngestConfig(sample_fps=4.0, chunk_seconds=1.0, frame_size=48, ice_hosts=("127.0.0.1",))
    ingest = StreamIngest("cam", "webrtc://cam", config, chunks.append, events.append)
    ingest.start()
    while not is_waiting("cam"):
        time.sleep(0.05)
    server, port = serve(signalling_app(chunks, events))
    try:
        seconds = run_browser(port, args.workdir, lambda: len(chunks) >= args.chunks, args.timeout)
    finally:
        ingest.stop()
        ingest.join(10)
        server.should_exit = True
    return summary(chunks, events, ingest, seconds)


def with_api(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """The real API (POST /streams/{id}/webrtc, GET /webcam) and ingest manager, as ``vidmem serve``."""
    from api.main import create_app
    from store.blobs import unpack_frames
    from store.db import session_scope
    from store.models import ChunkRecord, Stream
    from vidmem.settings import Settings
    from workers.app import create_celery
    from workers.ingest_manager import IngestManager
    from workers.runtime import Runtime

    use_ice_hosts(("127.0.0.1",))  # the only interface in this namespace
    # the open mode (no API keys, loopback only): Chromium opens /webcam with no key to send
    settings = Settings(_env_file=None, data_dir=args.workdir / "data", sample_fps=4.0, chunk_seconds=1.0,
                        frame_size=48, model="tiny-random", max_new_tokens=4, auth="open", api_host="127.0.0.1")
    settings.ensure_dirs()
    create_celery(settings)
    runtime = Runtime(settings, auto_upgrade=True)
    manager = IngestManager(runtime, poll_seconds=0.1)
    manager.start()
    server, port = serve(create_app(runtime))

    def rows() -> list[list[float]]:
        with session_scope(runtime.sessions) as session:
            records = session.query(ChunkRecord).filter(ChunkRecord.stream_id == "cam").order_by(ChunkRecord.seq)
            return [[r.seq, r.t_start, r.t_end, r.num_frames] for r in records]

    def halves_of(seq: int) -> list[list[float]]:
        blob = runtime.blobs.get(f"cam-{seq}")  # the key workers.dispatch gives a chunk's frames
        if blob is None:
            return []
        image = unpack_frames(blob)[0][-1].astype(float)
        w = image.shape[1]
        return [image[:, : w // 3].reshape(-1, 3).mean(0).round(1).tolist(),
                image[:, -w // 3 :].reshape(-1, 3).mean(0).round(1).tolist()]

    worker = None
    if args.answer:  # a real worker answers a question about what the webcam showed
        from vidmem.processes import WorkerProcess

        worker = WorkerProcess(settings)
        worker.start()
    try:
        seconds = run_browser(port, args.workdir, lambda: len(rows()) >= args.chunks, args.timeout)
        with session_scope(runtime.sessions) as session:
            stream = session.get(Stream, "cam")
            status = [stream.status, stream.source_url] if stream else None
        chunks = rows()
        result = {"chunks": chunks, "halves": [halves_of(int(c[0])) for c in chunks], "stream": status,
                  "seconds": seconds}
        if worker is not None:
            result["question"] = ask(port, "What is in view now?", args.timeout)
        return result
    finally:
        manager.stop()
        if worker is not None:
            worker.stop()
        server.should_exit = True


def ask(port: int, text: str, timeout: float) -> dict:  # type: ignore[type-arg]
    """POST a question about the webcam stream once a chunk is in memory; the finished question row."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while httpx.get(f"{base}/streams/cam").json()["memory_tokens"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    question_id = httpx.post(f"{base}/streams/cam/questions", json={"text": text}).json()["id"]
    while time.monotonic() < deadline:
        body = httpx.get(f"{base}/questions/{question_id}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.2)
    return {"status": "timeout"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=40.0)
    parser.add_argument("--api", action="store_true", help="go through the real API and ingest manager")
    parser.add_argument("--answer", action="store_true", help="with --api: a real worker answers a question")
    args = parser.parse_args()
    print(json.dumps(with_api(args) if args.api else with_signalling_app(args)))


if __name__ == "__main__":
    main()
