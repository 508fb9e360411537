"""``vidmem serve`` as a user runs it: one command, then everything through HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(240)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(fetch, done, timeout: float = 150.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fetch()
            if done(value):
                return value
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError("timed out")


def test_serve_when_a_file_stream_is_registered_answers_questions_about_it(tmp_path, make_h264):
    port = free_port()
    env = {**os.environ, "VIDMEM_DATA_DIR": str(tmp_path / "data"), "VIDMEM_API_PORT": str(port),
           "VIDMEM_MODEL": "tiny-random", "VIDMEM_FRAME_SIZE": "64", "VIDMEM_MAX_NEW_TOKENS": "4",
           "VIDMEM_FILE_DIR": str(tmp_path)}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen([sys.executable, "-m", "vidmem", "serve"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: httpx.get(f"{base}/health").status_code, lambda code: code == 200)
        video = make_h264(tmp_path / "clip.mp4", seconds=4.0)
        stream_id = httpx.post(f"{base}/streams", json={"source": str(video)}).json()["id"]
        poll(lambda: httpx.get(f"{base}/streams/{stream_id}").json(),
             lambda s: s["status"] == "ended" and s["chunks"]["pending"] == 0 and s["memory_tokens"] > 0)
        question_id = httpx.post(f"{base}/streams/{stream_id}/questions", json={"text": "What is here?"}).json()["id"]
        answer = poll(lambda: httpx.get(f"{base}/questions/{question_id}").json(), lambda q: q["status"] == "done")
        history = httpx.get(f"{base}/streams/{stream_id}/questions").json()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()

    assert answer["answer"] and answer["visual_tokens_before"] > 0
    assert [q["id"] for q in history["data"]] == [question_id]
    # a clean shutdown that also stopped the worker
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert "Finished server process" in (tmp_path / "serve.log").read_text()
    assert "Warm shutdown" in (tmp_path / "data" / "worker.log").read_text()
