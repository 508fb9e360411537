"""``vidmem serve`` stopped and started again as an operator does it: SIGTERM, SIGKILL, a second serve.

Real processes on a private data folder: the service, its worker child, a looping H.264 file.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.api_keys import bearer, key_for_settings
from tests.vidmem.test_serve import free_port, poll
from vidmem.processes import ServeLock, is_our_worker
from vidmem.settings import Settings
from workers.ingest_manager import SHUTDOWN_REASON

pytestmark = pytest.mark.timeout(400)


def serve_env(tmp_path: Path, port: int) -> dict[str, str]:
    return {**os.environ, "VIDMEM_DATA_DIR": str(tmp_path / "data"), "VIDMEM_API_PORT": str(port),
            "VIDMEM_MODEL": "tiny-random", "VIDMEM_FRAME_SIZE": "64", "VIDMEM_MAX_NEW_TOKENS": "4",
            "VIDMEM_CHUNK_SECONDS": "2", "VIDMEM_SAMPLE_FPS": "2", "VIDMEM_MEMORY_BUDGET": "256",
            "VIDMEM_LLM_BUDGET": "64", "VIDMEM_STAGE1": "uniform:ratio=0.5", "VIDMEM_STAGE2": "uniform",
            "VIDMEM_FILE_DIR": str(tmp_path)}


def start_serve(tmp_path: Path, port: int, name: str) -> subprocess.Popen[bytes]:
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it; closed with the test's folder
    return subprocess.Popen([sys.executable, "-m", "vidmem", "serve"], env=serve_env(tmp_path, port),
                            stdout=log, stderr=log)


def stop(server: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    if server.poll() is None:
        server.send_signal(signum)
    return server.wait(60)


def wait_healthy(base: str, server: subprocess.Popen[bytes]) -> None:
    def health() -> int:
        assert server.poll() is None, f"vidmem serve exited with {server.returncode}"
        return httpx.get(f"{base}/health").status_code

    poll(health, lambda code: code == 200, timeout=180)


def db(tmp_path: Path, query: str, *args: object) -> tuple:  # type: ignore[type-arg]
    with sqlite3.connect(f"file:{tmp_path / 'data' / 'vidmem.sqlite3'}?mode=ro", uri=True) as conn:
        return conn.execute(query, args).fetchone()


def our_workers(data_dir: Path) -> list[int]:
    """Every live ``vidmem worker`` process on ``data_dir``, whoever its parent."""
    return sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and is_our_worker(int(p.name),
                                                                                                      data_dir))


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_serve_after_sigterm_resumes_live_streams_with_memory_and_history_but_not_stopped_ones(tmp_path, make_h264):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    video = make_h264(tmp_path / "clip.mp4", seconds=4.0)
    key = key_for_settings(Settings(_env_file=None, data_dir=tmp_path / "data"))  # the database serve will use
    api = httpx.Client(headers=bearer(key))
    first = start_serve(tmp_path, port, "first")
    try:
        wait_healthy(base, first)
        live_id = api.post(f"{base}/streams", json={"source": str(video), "loop": True}).json()["id"]
        # defect 10: stopped at once, before the manager's next sync could start it
        quick_id = api.post(f"{base}/streams", json={"source": str(video), "loop": True}).json()["id"]
        deleted = api.post(f"{base}/streams/{quick_id}/stop")
        quick = poll(lambda: api.get(f"{base}/streams/{quick_id}").json(), lambda s: s["status"] == "stopped",
                     timeout=10)
        poll(lambda: api.get(f"{base}/streams/{live_id}").json(),
             lambda s: s["status"] == "live" and s["chunks"]["applied"] >= 1 and s["memory_tokens"] > 0)
        question_id = api.post(f"{base}/streams/{live_id}/questions", json={"text": "What moves?"}).json()["id"]
        answer = poll(lambda: api.get(f"{base}/questions/{question_id}").json(), lambda q: q["status"] == "done")
    finally:
        first_code = stop(first)
    assert deleted.status_code == 200 and quick["active"] is False and quick["status_reason"] == "stopped by request"
    assert first_code == 0, (tmp_path / "first.log").read_text()[-2000:]
    # a shutdown is not a stop: the stream stays active, its row says why it is not running
    assert db(tmp_path, "SELECT active, status, status_reason FROM streams WHERE id = ?", live_id) == (
        1, "stopped", SHUTDOWN_REASON)
    before = db(tmp_path, "SELECT max(seq) FROM chunks WHERE stream_id = ?", live_id)[0]

    second = start_serve(tmp_path, port, "second")
    try:
        wait_healthy(base, second)
        t0 = time.monotonic()
        resumed = poll(lambda: api.get(f"{base}/streams/{live_id}").json(), lambda s: s["status"] == "live",
                       timeout=10)
        seconds_to_live = time.monotonic() - t0
        history = api.get(f"{base}/streams/{live_id}/questions").json()
        after = poll(lambda: db(tmp_path, "SELECT max(seq) FROM chunks WHERE stream_id = ?", live_id)[0],
                     lambda seq: seq > before, timeout=60)
        time.sleep(1.5)  # more than one manager sync: a stopped stream would have been started by now
        quick_after = api.get(f"{base}/streams/{quick_id}").json()
    finally:
        second_code = stop(second)

    assert seconds_to_live < 10 and resumed["active"] is True and resumed["memory_tokens"] > 0, resumed
    assert [(q["id"], q["answer"]) for q in history["data"]] == [(question_id, answer["answer"])]
    seqs = db(tmp_path, "SELECT count(*), count(DISTINCT seq), min(seq) FROM chunks WHERE stream_id = ?", live_id)
    assert after > before and seqs[0] == seqs[1] and seqs[2] == 0  # continued after the stored seq, none reused
    assert (quick_after["status"], quick_after["active"]) == ("stopped", False)
    assert db(tmp_path, "SELECT count(*) FROM chunks WHERE stream_id = ?", quick_id) == (0,)
    assert second_code == 0, (tmp_path / "second.log").read_text()[-2000:]


def test_serve_after_sigkill_leaves_no_orphan_worker_and_refuses_a_second_serve_beside_it(tmp_path):
    data = (tmp_path / "data").resolve()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = start_serve(tmp_path, port, "first")
    try:
        wait_healthy(base, first)
        old_worker = int((data / "worker.pid").read_text())
        assert our_workers(data) == [old_worker] and parent_of(old_worker) == first.pid
    finally:
        stop(first, signal.SIGKILL)
    # the parent-death signal: the worker shuts down with its supervisor, nobody has to find it
    poll(lambda: our_workers(data), lambda pids: pids == [], timeout=60)

    second = start_serve(tmp_path, port, "second")
    try:
        wait_healthy(base, second)
        workers = our_workers(data)
        new_worker = int((data / "worker.pid").read_text())
        new_parent = parent_of(new_worker)
        beside = subprocess.run([sys.executable, "-m", "vidmem", "serve"], env=serve_env(tmp_path, free_port()),
                                capture_output=True, timeout=120)
        workers_after = our_workers(data)
    finally:
        second_code = stop(second)

    assert workers == [new_worker] and new_worker != old_worker and new_parent == second.pid
    assert beside.returncode == 2
    assert f"another vidmem serve (pid {second.pid}) is running on data dir {data}" in beside.stderr.decode()
    assert workers_after == [new_worker]  # the refused serve started no worker
    assert second_code == 0 and our_workers(data) == []


def test_serve_when_data_dir_is_held_refuses_with_the_holders_pid_and_starts_nothing(tmp_path):
    data = (tmp_path / "data").resolve()
    lock = ServeLock(data)
    lock.acquire()
    port = free_port()
    try:
        result = subprocess.run([sys.executable, "-m", "vidmem", "serve"], env=serve_env(tmp_path, port),
                                capture_output=True, timeout=120)
    finally:
        lock.release()

    assert result.returncode == 2
    assert f"error: another vidmem serve (pid {os.getpid()}) is running on data dir {data}; stop it first" in (
        result.stderr.decode())
    assert not (data / "worker.pid").exists() and not (data / "worker.log").exists() and our_workers(data) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health")
