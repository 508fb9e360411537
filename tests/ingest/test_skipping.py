"""Decode skipping: fewer frames decoded, the same frames delivered."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ingest.entities import IngestConfig, SkipMode
from ingest.skipping import DecodePlanner


def _ingest(run_ingest, path, skip, sample_fps=1.0):  # type: ignore[no-untyped-def]
    config = IngestConfig(sample_fps=sample_fps, chunk_seconds=2.0, frame_size=None, realtime=False, skip=skip)
    ingest, got = run_ingest(str(path), config)
    return ingest.stats(), [f for c in got.chunks for f in c.frames]


def test_stream_ingest_when_keyframe_every_second_at_1fps_decodes_only_keyframes(run_ingest, make_h264, tmp_path):
    # given 4 s at 30 fps with a keyframe every second
    path = make_h264(tmp_path / "gop30.mp4", seconds=4.0, fps=30, size=64, gop=30)
    # when sampled at 1 fps with and without skipping
    skipped, frames_skipped = _ingest(run_ingest, path, SkipMode.AUTO)
    full, frames_full = _ingest(run_ingest, path, SkipMode.NONE)
    # then only the keyframes are decoded (the file's packets gave the keyframe interval up front)
    assert full["frames_decoded"] == 120 and skipped["frames_decoded"] == 4
    assert skipped["frames_skipped"] == 120 - 4
    # and the delivered frames are the same
    assert [f.seconds for f in frames_skipped] == [f.seconds for f in frames_full] == [0.0, 1.0, 2.0, 3.0]
    for a, b in zip(frames_skipped, frames_full, strict=True):
        assert np.array_equal(a.image, b.image)


def test_stream_ingest_when_gop_longer_than_sample_period_decodes_up_to_each_sample(run_ingest, make_h264, tmp_path):
    # given 6 s at 30 fps with a keyframe every 2 s
    path = make_h264(tmp_path / "gop60.mp4", seconds=6.0, fps=30, size=64, gop=60)
    # when sampled at 1 fps
    skipped, frames_skipped = _ingest(run_ingest, path, SkipMode.AUTO)
    _, frames_full = _ingest(run_ingest, path, SkipMode.NONE)
    # then each GOP is decoded up to its mid-GOP sample (frame 30 of 60) and its tail is skipped
    assert skipped["frames_decoded"] == 3 * 31, skipped
    # and the frames are the same
    assert [f.seconds for f in frames_skipped] == pytest.approx([f.seconds for f in frames_full])
    for a, b in zip(frames_skipped, frames_full, strict=True):
        assert np.array_equal(a.image, b.image)


def test_stream_ingest_when_keyframes_mode_delivers_keyframes_only(run_ingest, make_h264, tmp_path):
    # given a keyframe every 2 s
    path = make_h264(tmp_path / "gop60.mp4", seconds=6.0, fps=30, size=64, gop=60)
    # when sampled at 1 fps in keyframes mode
    stats, frames = _ingest(run_ingest, path, SkipMode.KEYFRAMES)
    # then the rate drops to the keyframe rate rather than decoding P-frames
    assert stats["frames_decoded"] == 3 and stats["frames_skipped"] == 177
    assert [f.seconds for f in frames] == [0.0, 2.0, 4.0]


def test_decode_planner_when_sampling_rarer_than_keyframes_skips_whole_gops():
    # given 1 s GOPs at 10 fps, and a sampler wanting one frame every 3 s
    planner = DecodePlanner(SkipMode.AUTO)
    decoded, next_due = [], 0.0
    # when the packets of 9 s are planned
    for i in range(90):
        t = i / 10
        if planner.should_decode(t, i % 10 == 0, next_due):
            decoded.append(t)
            if t >= next_due:
                next_due = (int(t // 3) + 1) * 3.0
    # then after the first two GOPs (needed to learn the GOP) only the keyframes at 3 s and 6 s decode
    assert [t for t in decoded if t >= 2.0] == [3.0, 6.0]


def test_decode_planner_when_mode_none_decodes_everything():
    planner = DecodePlanner(SkipMode.NONE)
    assert all(planner.should_decode(i / 10, i % 10 == 0, 100.0) for i in range(30))
    assert planner.skip_frame == "DEFAULT"


def _write_b_frames(path: Path, seconds: float = 6.0, fps: int = 30) -> Path:
    """A clip with 3 B-frames between references and a keyframe every 2 s (decoders reorder)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.options = {"bf": "3", "g": str(2 * fps), "keyint_min": str(2 * fps), "sc_threshold": "0"}
        for i in range(int(seconds * fps)):
            image = np.full((64, 64, 3), 90, np.uint8)
            image[20:36, i * 40 // 180 : i * 40 // 180 + 16] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(SkipMode.NONE, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]), (SkipMode.AUTO, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
     (SkipMode.KEYFRAMES, [0.0, 2.0, 4.0])],
)
def test_stream_ingest_when_stream_has_b_frames_keeps_timestamps_right(run_ingest, tmp_path, mode, expected):
    # given a clip with B-frames (frames leave the decoder later than their packets go in)
    path = _write_b_frames(tmp_path / "bframes.mp4")
    # when sampled at 1 fps
    stats, frames = _ingest(run_ingest, path, mode)
    # then every frame carries its own media time
    assert [f.seconds for f in frames] == pytest.approx(expected)
    assert stats["decode_errors"] == 0
