"""``vidmem serve`` as a user runs it: one command, then everything through HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.api.test_web_page import free_port, wait_until
from tests.api_keys import bearer, key_for_settings
from vidmem.settings import Settings

pytestmark = pytest.mark.timeout(240)


def poll(fetch, done, timeout: float = 150.0):  # type: ignore[no-untyped-def]
    """``fetch()`` until ``done`` says yes; the server may not listen yet."""
    return wait_until(fetch, done, timeout=timeout)


def test_serve_when_a_file_stream_is_registered_answers_questions_about_it(tmp_path, make_h264):
    port = free_port()
    env = {**os.environ, "VIDMEM_DATA_DIR": str(tmp_path / "data"), "VIDMEM_API_PORT": str(port),
           "VIDMEM_MODEL": "tiny-random", "VIDMEM_FRAME_SIZE": "64", "VIDMEM_MAX_NEW_TOKENS": "4",
           "VIDMEM_FILE_DIR": str(tmp_path)}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    key = key_for_settings(Settings(_env_file=None, data_dir=tmp_path / "data"))  # the database serve will use
    server = subprocess.Popen([sys.executable, "-m", "vidmem", "serve"], env=env, stdout=log, stderr=log)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=bearer(key))
    try:
        poll(lambda: http.get("/health").status_code, lambda code: code == 200)
        video = make_h264(tmp_path / "clip.mp4", seconds=4.0)
        stream_id = http.post("/streams", json={"source": str(video)}).json()["id"]
        poll(lambda: http.get(f"/streams/{stream_id}").json(),
             lambda s: s["status"] == "ended" and s["chunks"]["pending"] == 0 and s["memory_tokens"] > 0)
        question_id = http.post(f"/streams/{stream_id}/questions", json={"text": "What is here?"}).json()["id"]
        answer = poll(lambda: http.get(f"/questions/{question_id}").json(), lambda q: q["status"] == "done")
        history = http.get(f"/streams/{stream_id}/questions").json()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
        http.close()

    assert answer["answer"] and answer["visual_tokens_before"] > 0
    assert [q["id"] for q in history["data"]] == [question_id]
    # a clean shutdown that also stopped the worker
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert "Finished server process" in (tmp_path / "serve.log").read_text()
    assert "Warm shutdown" in (tmp_path / "data" / "worker.log").read_text()
