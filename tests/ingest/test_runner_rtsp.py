"""StreamIngest against a real RTSP server (GStreamer): live ingest, server killed, server hung."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from ingest.entities import IngestConfig, StreamStatus
from tests.ingest.peers.rtsp import RtspServer, need_gst_rtsp

pytestmark = pytest.mark.slow

STALL_S = 2.0
LIVE = IngestConfig(
    sample_fps=5.0, chunk_seconds=1.0, frame_size=32, stall_seconds=STALL_S, open_timeout_s=3.0,
    backoff_initial_s=0.2, backoff_max_s=1.0,
)


@pytest.fixture
def rtsp_server() -> Iterator[RtspServer]:
    need_gst_rtsp()
    server = RtspServer("--fps", "30", "--gop", "30").start()
    yield server
    server.kill()


def _live_events(got):  # type: ignore[no-untyped-def]
    return [e for e in got.events if e.status is StreamStatus.LIVE]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_stream_ingest_when_rtsp_live_delivers_ordered_chunks(rtsp_server, run_ingest, transport):
    # given a live RTSP stream, read over TCP (interleaved) or UDP
    ingest, got = run_ingest(rtsp_server.url, replace(LIVE, rtsp_transport=transport), wait=False)
    # when three chunks have arrived
    assert got.wait_for(lambda: len(got.chunks) >= 3, timeout=15), got.events
    # then they are in order, a chunk long, with about 5 frames each at 0.2 s spacing
    chunks = got.chunks[:3]
    assert [c.seq for c in chunks] == [0, 1, 2]
    for chunk in chunks[1:]:
        assert chunk.t_end - chunk.t_start == pytest.approx(1.0)
        assert 4 <= len(chunk.frames) <= 6, [f.seconds for f in chunk.frames]
        assert all(chunk.t_start <= f.seconds < chunk.t_end for f in chunk.frames)
    seconds = [f.seconds for c in chunks for f in c.frames]
    slots = [int(s * LIVE.sample_fps + 1e-6) for s in seconds]
    assert slots == sorted(set(slots)), f"one frame per 0.2 s slot: {seconds}"
    assert chunks[0].frames[0].image.shape == (32, 32, 3)
    stats = ingest.stats()
    assert stats["status"] == "live" and stats["connects"] == 1 and stats["frames_sampled"] >= 15
    assert stats["behind_live_seconds"] < 1.0, "a 320x240 stream is decoded in real time"


def test_stream_ingest_when_rtsp_server_restarts_records_gap_and_continues_seq(rtsp_server, run_ingest):
    # given a live RTSP ingest that has delivered video
    ingest, got = run_ingest(rtsp_server.url, LIVE, wait=False)
    assert got.wait_for(lambda: len(got.chunks) >= 2, timeout=15), got.events
    # when the server is killed, stays away 3 s and comes back on the same port
    rtsp_server.kill()
    killed = time.time()
    assert got.wait_for(lambda: StreamStatus.RECONNECTING in got.statuses, timeout=STALL_S + 1)
    noticed = next(e.wall_time for e in got.events if e.status is StreamStatus.RECONNECTING)
    time.sleep(max(0.0, killed + 3.0 - time.time()))
    seq_before = len(got.chunks)
    rtsp_server.start()
    back = time.time()
    assert got.wait_for(lambda: len(_live_events(got)) >= 2 and len(got.chunks) > seq_before + 1, timeout=10)
    # then the outage was noticed within the stall time, and video was back within 3 s of the server
    assert noticed - killed < STALL_S, f"noticed after {noticed - killed:.2f} s"
    relive = _live_events(got)[1]
    assert relive.wall_time - back < 3.0, f"live again {relive.wall_time - back:.2f} s after the restart"
    # and the gap covers the outage, seq runs on without a hole, time runs on
    assert relive.gap is not None and relive.gap.seconds > 2.5, relive
    assert ingest.stats()["gap_count"] == 1 and ingest.stats()["reconnects"] >= 1
    assert [c.seq for c in got.chunks] == list(range(len(got.chunks)))
    after = got.chunks[seq_before + 1]
    assert after.t_start >= relive.gap.t_end - 1.0 and after.t_start > got.chunks[seq_before - 1].t_end


def test_stream_ingest_when_rtsp_server_hangs_detects_stall_and_recovers(rtsp_server, run_ingest):
    # given a live RTSP ingest that has delivered video
    ingest, got = run_ingest(rtsp_server.url, LIVE, wait=False)
    assert got.wait_for(lambda: len(got.chunks) >= 1, timeout=15), got.events
    # when the server hangs (SIGSTOP: connection open, no data)
    rtsp_server.pause()
    hung = time.time()
    # then the stall is detected within the stall time (plus scheduling slack)
    assert got.wait_for(lambda: StreamStatus.RECONNECTING in got.statuses, timeout=STALL_S + 3)
    event = next(e for e in got.events if e.status is StreamStatus.RECONNECTING)
    assert "stalled" in event.reason, event.reason
    assert event.wall_time - hung < STALL_S + 1.0, f"detected after {event.wall_time - hung:.2f} s"
    # and when it resumes, video flows again
    rtsp_server.resume()
    assert got.wait_for(lambda: len(_live_events(got)) >= 2, timeout=10), got.events
    assert ingest.stats()["status"] == "live"
