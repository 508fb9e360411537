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
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from pydantic import ValidationError

from ingest.entities import IngestConfig, StreamStatus
from ingest.webrtc import WebRTCNotReady, answer_offer, is_waiting
from tests.ingest.peers import skip_or_fail
from tests.ingest.peers.browser import chromium_path
from tests.ingest.peers.ice_probe import answer_only
from tests.ingest.peers.webcam_track import HalvesTrack
from vidmem.settings import Settings
from workers.sources import ingest_config

REPO = Path(__file__).resolve().parents[2]

LOOPBACK = IngestConfig(sample_fps=5.0, chunk_seconds=1.0, frame_size=32, ice_hosts=("127.0.0.1",), stall_seconds=2.0)


def _peer() -> RTCPeerConnection:
    """The test's browser: no STUN server either (aiortc's default would query a public one)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def _send_webcam(name: str, seconds: float) -> None:
    pc = _peer()
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


def test_answer_offer_when_a_stream_url_names_another_id_does_not_reach_it(run_ingest):
    # given stream "other" whose URL names cam-b, waiting for a browser
    ingest, got = run_ingest("webrtc://cam-b", LOOPBACK, wait=False, stream_id="other")
    assert _wait_until(lambda: is_waiting("other"), 5)
    # when an offer is posted for stream cam-b
    # then no ingest takes it: offers are matched by stream id, not by the name in a URL
    assert not is_waiting("cam-b")
    with pytest.raises(WebRTCNotReady, match="no WebRTC ingest of stream 'cam-b'"):
        asyncio.run(answer_only("cam-b"))
    # and the other stream saw no connection at all (its first status may be reported just after it waits)
    assert got.wait_for(lambda: bool(got.statuses), timeout=5)
    assert ingest.stats()["connects"] == 0 and got.statuses == [StreamStatus.CONNECTING], got.events
    # while an offer to its own id is answered by it
    assert asyncio.run(answer_only("other")).type == "answer"
    assert ingest.stats()["connects"] == 1


def _ice_probe(*extra: str) -> dict:  # type: ignore[type-arg]
    """Run ``peers/ice_probe.py`` in a loopback-only network namespace: a regression to aiortc's default
    STUN server then fails here instead of sending a packet off the machine. Its JSON result."""
    missing = _netns_missing()
    if missing:
        skip_or_fail(missing)
    command = f"{sys.executable} -m tests.ingest.peers.ice_probe {' '.join(extra)}"
    done = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up; exec {command}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_webrtc_answer_when_no_ice_servers_are_configured_contacts_no_stun_or_turn():
    # given a WebRTC ingest under the default settings' ICE configuration, in a loopback-only namespace
    # when a peer's offer is answered
    result = _ice_probe()
    # then its peer connection has neither a STUN nor a TURN server (aiortc's default is stun.l.google.com)
    assert result["configured"] == [] and (result["stun_server"], result["turn_server"]) == (None, None), result
    # and the answer offers host candidates only
    assert result["candidate_types"] == ["host"], result


def test_webrtc_answer_when_a_stun_server_is_configured_queries_exactly_it():
    # given a STUN server on 127.0.0.1, configured through Settings.ice_servers
    # when a peer's offer is answered
    result = _ice_probe("--stun")
    # then the ingest asked that server, and the answer carries the reflexive candidate it gave
    assert result["stun_server"] == ["127.0.0.1", result["stun_port"]] and result["turn_server"] is None, result
    assert result["stun_requests_from"] == ["127.0.0.1"], result
    assert result["candidate_types"] == ["host", "srflx"], result


def test_webrtc_ingest_when_an_ice_server_url_is_malformed_fails_naming_it(run_ingest):
    # given an ICE server URL aiortc cannot parse (it would fail only once an offer arrives)
    config = IngestConfig(ice_servers=("stun:",), ice_hosts=("127.0.0.1",))
    # when the ingest starts, then it fails at once, naming the URL, and takes no offers
    ingest, got = run_ingest("webrtc://bad-ice", config, stream_id="bad-ice")
    assert got.final is not None and got.final.status is StreamStatus.FAILED
    assert "malformed ICE server URLs" in got.final.reason and "'stun:'" in got.final.reason, got.final
    assert not is_waiting("bad-ice") and ingest.stats()["connects"] == 0


def test_settings_when_an_ice_server_is_not_stun_or_turn_are_refused():
    with pytest.raises(ValidationError, match="ICE servers must be stun:, stuns:, turn: or turns: URLs"):
        Settings(_env_file=None, ice_servers=["http://198.51.100.7:3478"])


def test_ingest_config_when_turn_is_configured_keeps_the_password_out_of_its_repr():
    settings = Settings(_env_file=None, ice_servers=["turn:198.51.100.7:3478"], ice_username="u",
                        ice_credential="s3cret")
    config = ingest_config(settings)
    assert (config.ice_servers, config.ice_username, config.ice_credential) == (
        ("turn:198.51.100.7:3478",), "u", "s3cret")
    assert "s3cret" not in repr(config)


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
