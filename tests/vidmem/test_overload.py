"""Overload: history requests as fast as the machine answers them, for 15 s, beside a live stream.

Real parts as ``vidmem serve`` runs them: uvicorn serving the app in a thread, the ingest manager
on a looping local H.264 file played at its own rate (a live camera), a real Celery worker child
on the embedded file broker with the tiny random model. The load comes from another process
(several keep-alive client threads, closed loop: each sends its next request when the last one
is answered, so the rate reached is what the server sustains). Expected: no chunk lost, chunks
keep coming during the load, every answer is 200, 429 or 503 and none takes long.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from api.main import create_app
from store import repo
from store.db import session_scope
from store.models import ChunkRecord, QuestionStatus
from tests.api_keys import bearer, new_key
from tests.workers.cluster import served, wait_for
from workers.runtime import Runtime

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

LOAD_SECONDS = 15.0
CLIENT_THREADS = 24  # three times the API pool (VIDMEM_API_POOL_SIZE=8): some requests must wait or be refused
REQUEST_TIMEOUT_S = 30.0  # a client gives up after this; the API must answer far sooner
SLOW_ANSWER_S = 5.0

LOAD = textwrap.dedent("""
    import json, sys, threading, time
    import httpx

    url, seconds, threads, timeout = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    headers = {"Authorization": f"Bearer {sys.argv[5]}"}
    codes, latencies, errors = {}, [], []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client():
        with httpx.Client(timeout=timeout, headers=headers) as http:
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    code = http.get(url).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with lock:
                    codes[str(code)] = codes.get(str(code), 0) + 1
                    latencies.append(time.monotonic() - t0)

    started = time.monotonic()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    print(json.dumps({"codes": codes, "requests": len(latencies), "seconds": elapsed,
                      "p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99)],
                      "max": latencies[-1]}))
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def service(settings):  # type: ignore[no-untyped-def]
    """``vidmem serve`` in parts: API on uvicorn (thread), ingest manager, one worker process."""
    settings = settings.model_copy(update={"api_port": free_port()})
    with served(settings, recover=False, poll_seconds=0.2) as (runtime, _):
        server = uvicorn.Server(uvicorn.Config(create_app(runtime), host="127.0.0.1", port=settings.api_port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started, timeout=30, every=0.05)
        try:
            yield f"http://127.0.0.1:{settings.api_port}", runtime
        finally:
            server.should_exit = True
            thread.join(15)


def seed_history(runtime: Runtime, stream_id: str, count: int = 200) -> None:
    """Answered questions straight into the database: history to read, no work for the worker."""
    with session_scope(runtime.sessions) as session:
        for i in range(count):
            question = repo.create_question(session, stream_id=stream_id, text=f"What happened at minute {i}?")
            question.status, question.answer = QuestionStatus.done, f"a red square, {i}"


def test_history_when_flooded_beside_a_live_stream_loses_no_chunk_and_answers_quickly(service, tmp_path, make_h264):
    base, runtime = service
    video = make_h264(tmp_path / "camera.mp4", seconds=4.0, fps=10)
    key = new_key(runtime.sessions)
    with httpx.Client(base_url=base, timeout=10, headers=bearer(key)) as http:
        created = http.post("/streams", json={"source": str(video), "loop": True})
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        seed_history(runtime, stream_id)
        wait_for(lambda: http.get(f"/streams/{stream_id}").json()["chunks"]["applied"] >= 1, every=0.2)
        before = http.get(f"/streams/{stream_id}").json()["chunks"]

        # when the history is read as fast as the API answers, for 15 s, from another process
        load = subprocess.run(
            [sys.executable, "-c", LOAD, f"{base}/streams/{stream_id}/questions?limit=50", str(LOAD_SECONDS),
             str(CLIENT_THREADS), str(REQUEST_TIMEOUT_S), key],
            capture_output=True, text=True, timeout=LOAD_SECONDS + REQUEST_TIMEOUT_S + 30,
        )
        assert load.returncode == 0, load.stderr[-3000:]
        result = json.loads(load.stdout)
        during = http.get(f"/streams/{stream_id}").json()["chunks"]

        # then stop the stream and let the worker finish what is queued
        assert http.post(f"/streams/{stream_id}/stop").status_code == 200
        final = wait_for(lambda: (s := http.get(f"/streams/{stream_id}").json())["status"] == "stopped"
                         and s["chunks"]["pending"] == 0 and s, timeout=120, every=0.2)
        metrics = http.get("/metrics").text

    rate = result["requests"] / result["seconds"]
    print(f"\nhistory GETs: {rate:.0f} requests/s over {result['seconds']:.1f} s from {CLIENT_THREADS} threads; "
          f"codes {result['codes']}; latency p50 {result['p50'] * 1e3:.0f} ms, p99 {result['p99'] * 1e3:.0f} ms, "
          f"max {result['max'] * 1e3:.0f} ms; chunks during the load {sum(during.values()) - sum(before.values())}")
    # every answer is a success or a quick refusal, never a client timeout
    assert set(result["codes"]) <= {"200", "429", "503"}, result["codes"]
    assert result["codes"].get("200", 0) > 0
    assert result["max"] < SLOW_ANSWER_S, f"an answer took {result['max']:.1f} s"
    # ingest kept going: a 2 s chunk about every 2 s of the load, and none was lost or dropped
    made = sum(during.values()) - sum(before.values())
    assert made >= 0.6 * LOAD_SECONDS / runtime.settings.chunk_seconds, (before, during)
    stats = final["stats"]
    assert stats["chunks_lost"] == 0 and stats["chunks_lost_reasons"] == {}, stats
    assert stats["callback_errors"] == 0 and stats["chunks_dropped"] == 0, stats
    assert final["chunks"]["dropped"] == 0 and final["chunks"]["failed"] == 0, final["chunks"]
    assert final["chunks"]["applied"] == sum(final["chunks"].values()), final["chunks"]
    with session_scope(runtime.sessions) as session:  # no hole in the sequence: every chunk made has its row
        seqs = session.scalars(select(ChunkRecord.seq).where(ChunkRecord.stream_id == stream_id)).all()
    assert sorted(seqs) == list(range(len(seqs))) and len(seqs) >= stats["chunks_emitted"], (seqs, stats)
    assert f'vidmem_ingest_chunks_lost{{stream="{stream_id}"}} 0' in metrics
