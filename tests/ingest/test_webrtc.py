"""WebRTC ingest: an aiortc peer (fast) and headless Chromium with a fake webcam (slow, own netns)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from ingest.entities import IngestConfig, StreamStatus
from ingest.webrtc import WebRTCNotReady, answer_offer, is_waiting
from tests.ingest.peers import skip_or_fail
from tests.ingest.peers.browser import chromium_path
from tests.ingest.peers.webcam_track import HalvesTrack

REPO = Path(__file__).resolve().parents[2]

LOOPBACK = IngestConfig(sample_fps=5.0, chunk_seconds=1.0, frame_size=32, ice_hosts=("127.0.0.1",), stall_seconds=2.0)


async def _send_webcam(name: str, seconds: float) -> None:
    pc = RTCPeerConnection()
    pc.addTrack(HalvesTrack())
    await pc.setLocalDescription(await pc.createOffer())
    answer = await answer_offer(name, pc.localDescription.sdp, pc.localDescription.type)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type=answer.type))
    await asyncio.sleep(seconds)
    await pc.close()


def _wait_until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_answer_offer_when_no_ingest_runs_raises_not_ready():
    with pytest.raises(WebRTCNotReady, match="nobody"):
        asyncio.run(answer_offer("nobody", "v=0", "offer"))


def test_webrtc_ingest_when_peer_sends_video_delivers_chunks_with_its_content(run_ingest):
    # given a WebRTC ingest waiting for a browser
    ingest, got = run_ingest("webrtc://cam-a", LOOPBACK, wait=False, stream_id="cam-a")
    assert _wait_until(lambda: is_waiting("cam-a"), 5)
    # when a peer sends its webcam for 3 s
    asyncio.run(_send_webcam("cam-a", 3.0))
    assert got.wait_for(lambda: len(got.chunks) >= 2, timeout=10), got.events
    # then chunks arrive in order with the webcam's picture: red left, blue right
    assert [c.seq for c in got.chunks[:2]] == [0, 1]
    image = got.chunks[1].frames[-1].image.astype(int)
    assert image[:, :12, 0].mean() > 150 and image[:, :12, 2].mean() < 90, "left half red"
    assert image[:, 20:, 2].mean() > 150 and image[:, 20:, 0].mean() < 90, "right half blue"
    assert StreamStatus.LIVE in got.statuses
    # and when the peer hangs up, the ingest waits for the next offer
    assert got.wait_for(lambda: got.statuses[-1] is StreamStatus.RECONNECTING, timeout=LOOPBACK.stall_seconds + 3)
    ingest.stop()
    assert ingest.join(5) and got.final.status is StreamStatus.STOPPED


def _netns_missing() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare/ip (util-linux, iproute2) are missing"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.decode().strip()}"
    return None


def _browser_roundtrip(workdir: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    """Run ``peers/webcam_roundtrip.py`` in a loopback-only network namespace; its JSON result."""
    missing = ("chromium is missing (Debian: chromium)" if chromium_path() is None else None) or _netns_missing()
    if missing:
        skip_or_fail(missing)
    command = f"{sys.executable} -m tests.ingest.peers.webcam_roundtrip --workdir {workdir} {' '.join(extra)}"
    done = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up; exec {command}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_red_left_blue_right(halves: list) -> None:  # type: ignore[type-arg]
    assert halves and all(h for h in halves), halves
    for left, right in halves:
        assert left[0] > 150 and left[2] < 90 and right[2] > 150 and right[0] < 90, halves


@pytest.mark.slow
def test_webrtc_ingest_when_chromium_streams_its_fake_webcam_delivers_its_picture(tmp_path):
    # given headless Chromium with a fake webcam playing a red|blue y4m, in a loopback-only namespace
    # when the webcam page streams it over WebRTC into a webrtc:// ingest
    result = _browser_roundtrip(tmp_path)
    # then chunks arrive in order, and their frames show the webcam's red left and blue right
    seqs = [c[0] for c in result["chunks"]]
    assert len(seqs) >= 3 and seqs == list(range(len(seqs))), result["chunks"]
    _assert_red_left_blue_right(result["halves"])
    assert result["statuses"][:2] == ["connecting", "live"] and result["statuses"][-1] == "stopped"


@pytest.mark.slow
def test_webrtc_route_when_chromium_opens_the_webcam_page_records_chunks(tmp_path):
    # given the real API and ingest manager, and headless Chromium with the red|blue fake webcam
    # when the browser opens /webcam, which posts its offer to /streams/cam/webrtc
    result = _browser_roundtrip(tmp_path, "--api")
    # then the stream was created as webrtc://cam, is live, and its chunks hold the webcam's picture
    assert result["stream"] == ["live", "webrtc://cam"], result
    assert [c[0] for c in result["chunks"]][:3] == [0, 1, 2], result["chunks"]
    _assert_red_left_blue_right(result["halves"])


@pytest.mark.slow
def test_webrtc_webcam_when_asked_about_is_answered_by_a_worker(tmp_path):
    # given the real API, ingest manager and a worker process, and Chromium streaming its fake webcam
    # when the webcam's chunks reach the stream's memory and a question is posted
    result = _browser_roundtrip(tmp_path, "--api", "--answer")
    # then a worker answers it over the webcam's visual tokens
    question = result["question"]
    assert question["status"] == "done", question
    assert question["visual_tokens_before"] > 0 and question["answer"], question
