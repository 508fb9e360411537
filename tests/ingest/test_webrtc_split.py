"""WebRTC in a split deployment: ``vidmem api`` and ``vidmem ingest`` as separate processes, Chromium as the browser.

Everything runs inside a loopback-only network namespace: a private redis-server (no persistence),
one SQLite file both processes use (PostgreSQL is outside the namespace), the two vidmem
processes with separate data folders, as on two hosts, and headless Chromium with a fake webcam.
The driver is this module run as a program; it prints one JSON line the tests read:
    unshare -n sh -c 'ip link set lo up; exec python -m tests.ingest.test_webrtc_split --workdir DIR'
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ingest.peers import run_browser_driver
from tests.ingest.peers.browser import launch_chromium, write_halves_y4m
from tests.workers.test_redis_restart import PrivateRedis, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)


def _env(workdir: Path, redis_port: int, role: str, **extra: str) -> dict[str, str]:
    """Settings of one process: its own data folder, the shared SQLite file and the private Redis."""
    return {
        **os.environ, "VIDMEM_DATA_DIR": str(workdir / role), "VIDMEM_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "VIDMEM_DATABASE_URL": f"sqlite:///{workdir / 'shared.sqlite3'}", "VIDMEM_MODEL": "tiny-random",
        "VIDMEM_SAMPLE_FPS": "4", "VIDMEM_CHUNK_SECONDS": "1", "VIDMEM_FRAME_SIZE": "48",
        "VIDMEM_STAGE1": "uniform:ratio=0.5", "VIDMEM_STAGE2": "uniform", **extra,
    }


def _start(workdir: Path, env: dict[str, str], *command: str) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{command[0]}.log", "wb")  # noqa: SIM115 - the child holds it
    return subprocess.Popen([sys.executable, "-m", "vidmem", *command], env=env, stdout=log, stderr=log, cwd=REPO)


def _chunk_rows(workdir: Path, stream_id: str) -> list[list[Any]]:
    with sqlite3.connect(f"file:{workdir / 'shared.sqlite3'}?mode=ro", uri=True, timeout=5) as conn:
        return [list(r) for r in conn.execute(
            "SELECT seq, t_start, t_end, num_frames FROM chunks WHERE stream_id = ? ORDER BY seq", (stream_id,))]


def _halves(redis: PrivateRedis, stream_id: str, seq: int) -> list[list[float]]:
    """Mean colour of the left and right third of the chunk's last frame, from its blob in Redis."""
    from store.blobs import unpack_frames

    blob = redis.client().get(f"vidmem:blob:{stream_id}-{seq}")
    if blob is None:
        return []
    image = unpack_frames(blob)[0][-1].astype(float)
    third = image.shape[1] // 3
    return [image[:, :third].reshape(-1, 3).mean(0).round(1).tolist(),
            image[:, -third:].reshape(-1, 3).mean(0).round(1).tolist()]


def _no_ingest_phase(base: str, redis: PrivateRedis) -> dict[str, Any]:
    """An offer while no ingest runs: the answer, how long it took, what is left behind."""
    t0 = time.monotonic()
    response = httpx.post(f"{base}/streams/lonely/webrtc", json={"sdp": "v=0\r\n", "type": "offer"}, timeout=60)
    seconds = time.monotonic() - t0
    return {"status": response.status_code, "detail": response.json().get("detail"), "seconds": round(seconds, 1),
            "after": httpx.get(f"{base}/streams/lonely").status_code,
            "redis_keys": sorted(k.decode() for k in redis.client().scan_iter("vidmem:webrtc:*"))}


def _browser_phase(workdir: Path, base: str, redis: PrivateRedis, chunks: int) -> dict[str, Any]:
    y4m = write_halves_y4m(workdir / "halves.y4m")
    browser = launch_chromium(f"{base}/webcam?stream=cam&autostart=1", y4m, workdir / "profile",
                              workdir / "chromium.log")
    try:
        rows = wait_for(lambda: _chunk_rows(workdir, "cam"), lambda r: len(r) >= chunks, timeout=60)
        stream = httpx.get(f"{base}/streams/cam").json()
        halves = [_halves(redis, "cam", int(row[0])) for row in rows]
    finally:
        browser.kill()
        browser.wait(10)
    return {"chunks": rows, "stream": [stream["status"], stream["source"]], "halves": halves}


def drive(workdir: Path, chunks: int) -> dict[str, Any]:
    """api alone (an offer gets 503), then ingest too (Chromium's webcam becomes chunks)."""
    redis = PrivateRedis(workdir / "redis")
    redis.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        api_port = free_port()
        # the open mode (no API keys, loopback only): Chromium opens /webcam with no key to send
        env = _env(workdir, redis.port, "api", VIDMEM_API_PORT=str(api_port), VIDMEM_AUTH="open")
        subprocess.run([sys.executable, "-m", "vidmem", "db", "upgrade"], env=env, cwd=REPO, check=True,
                       capture_output=True)
        procs.append(_start(workdir, env, "api"))
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: httpx.get(f"{base}/health").status_code, lambda code: code == 200, timeout=90)
        result = {"no_ingest": _no_ingest_phase(base, redis)}
        procs.append(_start(workdir, _env(workdir, redis.port, "ingest", VIDMEM_ICE_HOSTS='["127.0.0.1"]'), "ingest"))
        wait_for(lambda: (workdir / "ingest.log").read_text(), lambda text: "served through Redis" in text, 90)
        result["browser"] = _browser_phase(workdir, base, redis, chunks)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        redis.stop()
    result["answered_by"] = [name for name in ("api", "ingest")
                             if "stream cam: WebRTC offer answered" in (workdir / f"{name}.log").read_text()]
    return result


@pytest.fixture(scope="module")
def split_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The driver's result, run once inside a loopback-only network namespace."""
    workdir = tmp_path_factory.mktemp("split")
    done = run_browser_driver("tests.ingest.test_webrtc_split", workdir, timeout=220)
    logs = {name: (workdir / f"{name}.log").read_text()[-1500:] for name in ("api", "ingest")
            if (workdir / f"{name}.log").exists()}
    assert done.returncode == 0, (done.stderr[-3000:], logs)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_webrtc_offer_when_api_and_ingest_are_separate_processes_records_chromiums_webcam(split_run):
    browser = split_run["browser"]
    # then the stream was created as webrtc://cam and is live, its chunks recorded in order
    assert browser["stream"] == ["live", "webrtc://cam"], browser
    seqs = [row[0] for row in browser["chunks"]]
    assert len(seqs) >= 3 and seqs == list(range(len(seqs))), browser["chunks"]
    # and the frames are the webcam's: red left, blue right
    halves = [h for h in browser["halves"] if h]
    assert halves, browser["halves"]
    for left, right in halves:
        assert left[0] > 150 and left[2] < 90 and right[2] > 150 and right[0] < 90, halves
    # and the offer was answered by the ingest process, not by the API's
    assert split_run["answered_by"] == ["ingest"]


@pytest.mark.slow
def test_webrtc_offer_when_no_ingest_runs_is_503_and_leaves_no_stream(split_run):
    lonely = split_run["no_ingest"]
    assert lonely["status"] == 503, lonely
    assert "no ingest took stream 'lonely' within 10 s" in lonely["detail"], lonely
    assert 9.5 <= lonely["seconds"] < 20, lonely
    # nothing left behind: no stream row (not `connecting` for ever), no offer waiting in Redis
    assert lonely["after"] == 404 and lonely["redis_keys"] == [], lonely


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(drive(args.workdir, args.chunks)))


if __name__ == "__main__":
    main()
