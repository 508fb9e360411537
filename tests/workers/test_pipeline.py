"""End to end: a real H.264 file through ingest, a real Celery worker, the model and the memory.

The worker is a child process (``vidmem worker``) on the embedded file queue, exactly as
``vidmem serve`` runs it; the model is the tiny random LLaVA-OneVision.
"""

from __future__ import annotations

import os
import signal

import pytest

from store import repo
from store.db import session_scope
from tests.workers.cluster import served_client, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def service(tmp_path_factory, settings_factory):  # type: ignore[no-untyped-def]
    """API client + ingest manager + one real worker process, like ``vidmem serve`` (one per module)."""
    with served_client(settings_factory(tmp_path_factory.mktemp("service"))) as service:
        yield service


def test_file_stream_is_ingested_encoded_compressed_and_answered(service, tmp_path, make_h264):
    client, runtime, _ = service
    video = make_h264(tmp_path / "clip.mp4", seconds=6.0, fps=10)

    # given a stream registered through the API and fully ingested
    stream_id = client.post("/streams", json={"source": str(video)}).json()["id"]
    stream = wait_for(lambda: (s := client.get(f"/streams/{stream_id}").json())["status"] == "ended"
                      and s["chunks"]["pending"] == 0 and s)
    # when a question is queued
    posted = client.post(f"/streams/{stream_id}/questions", json={"text": "What is in view now?"})
    seen = [posted.json()["status"]]
    question_id = posted.json()["id"]

    def finished():  # type: ignore[no-untyped-def]
        body = client.get(f"/questions/{question_id}").json()
        if body["status"] != seen[-1]:
            seen.append(body["status"])
        return body if body["status"] in ("done", "failed") else None

    answer = wait_for(finished, every=0.005)
    # then the answer row holds the answer, the token counts and the time stamps in order
    assert posted.status_code == 202
    assert seen[0] == "queued" and seen[-1] == "done" and set(seen) <= {"queued", "running", "done"}, seen
    assert answer["answer"].startswith("[untrained model]"), "a random model must say so"
    frames = 6 * runtime.settings.sample_fps
    assert stream["chunks"]["applied"] == 3
    assert answer["visual_tokens_before"] == stream["memory_tokens"] > 0
    assert answer["visual_tokens_before"] <= frames * 4 * 0.5 + 1e-9, "stage 1 keeps half of 4 tokens a frame"
    assert answer["visual_tokens_after"] == min(answer["visual_tokens_before"], runtime.settings.llm_budget)
    assert answer["created_at"] <= answer["started_at"] <= answer["finished_at"]
    assert "stage1=uniform:ratio=0.5" in answer["method"]


def test_question_when_stream_has_no_video_yet_is_answered_as_such(service, tmp_path):
    client, runtime, _ = service
    with session_scope(runtime.sessions) as session:  # a stream that never produced a chunk
        stream = repo.create_stream(session, name="silent", source_url=str(tmp_path / "x.mp4"))
        stream.active = False
        stream_id = stream.id

    question_id = client.post(f"/streams/{stream_id}/questions", json={"text": "Anything?"}).json()["id"]
    answer = wait_for(lambda: (b := client.get(f"/questions/{question_id}").json())["status"] == "done" and b)

    assert "no video seen yet" in answer["answer"].lower()
    assert answer["visual_tokens_before"] == 0


def test_worker_killed_mid_stream_loses_no_chunk(service, tmp_path, make_h264):
    client, runtime, worker = service
    video = make_h264(tmp_path / "long.mp4", seconds=10.0, fps=10)
    stream_id = client.post("/streams", json={"source": str(video)}).json()["id"]

    # when the worker is killed (SIGKILL) right after the first chunk was applied
    wait_for(lambda: client.get(f"/streams/{stream_id}").json()["chunks"]["applied"] >= 1, every=0.01)
    os.kill(worker.pid, signal.SIGKILL)

    # then it is restarted, the rest is queued again and every chunk is applied once, in order
    done = wait_for(lambda: (s := client.get(f"/streams/{stream_id}").json())["status"] == "ended"
                    and s["chunks"]["pending"] == 0 and s)
    assert worker.restarts == 1
    assert done["chunks"]["applied"] == 5 and done["chunks"]["failed"] == 0
    record = runtime.memory_store.load(stream_id)
    assert record.last_seq == 4 and record.version == 5, "each chunk applied exactly once"
