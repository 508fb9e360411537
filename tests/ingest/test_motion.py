"""Motion vectors exported by the decoder, reduced to a grid."""

from __future__ import annotations

import av
import numpy as np

from ingest.entities import IngestConfig, SkipMode
from ingest.motion import enable_motion_vectors, motion_grid


def test_motion_grid_when_square_moves_is_largest_where_the_square_is(make_h264, tmp_path):
    # given a clip whose red square moves right (rows 21..37 of 64) and a decoder exporting vectors
    path = make_h264(tmp_path / "clip.mp4", seconds=2.0, fps=10, size=64, gop=20)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        enable_motion_vectors(stream.codec_context)
        frames = list(container.decode(stream))
    # when the grid of an inter frame and of the keyframe are computed
    moving = motion_grid(frames[5], 4, 4)
    still = motion_grid(frames[0], 4, 4)
    # then motion shows in the square's band only, and the keyframe carries none
    assert moving.shape == (4, 4) and moving.dtype == np.float32
    assert moving[1:3].max() > 0.5 and moving[0].max() == 0.0 and moving[3].max() == 0.0
    assert not still.any()


def test_stream_ingest_when_export_motion_attaches_a_grid_per_frame(run_ingest, make_h264, tmp_path):
    # given a clip and an ingest asking for motion on a 3x5 grid
    path = make_h264(tmp_path / "clip.mp4", seconds=3.0, fps=10, size=64, gop=30)
    config = IngestConfig(sample_fps=2.0, chunk_seconds=3.0, frame_size=16, realtime=False,
                          export_motion=True, motion_grid=(3, 5), skip=SkipMode.AUTO)
    # when ingested
    _, got = run_ingest(str(path), config)
    # then every frame has a grid, and the inter frames show motion
    motions = [f.motion for c in got.chunks for f in c.frames]
    assert all(m is not None and m.shape == (3, 5) for m in motions)
    assert sum(float(m.max()) > 0 for m in motions[1:]) >= 3


def test_stream_ingest_when_motion_wanted_and_only_keyframes_sampled_takes_motion_from_next_frame(
    run_ingest, make_h264, tmp_path
):
    # given a keyframe every second, sampled at 1 fps (so every sample is a keyframe, which has no vectors)
    path = make_h264(tmp_path / "clip.mp4", seconds=4.0, fps=10, size=64, gop=10)
    config = IngestConfig(sample_fps=1.0, chunk_seconds=4.0, frame_size=16, realtime=False,
                          export_motion=True, motion_grid=(4, 4))
    # when ingested with decode skipping
    ingest, got = run_ingest(str(path), config)
    # then each sample keeps its own time and image, with the motion of the frame after it
    frames = got.chunks[0].frames
    assert [f.seconds for f in frames] == [0.0, 1.0, 2.0, 3.0]
    assert all(f.motion is not None and f.motion[1:3].max() > 0.5 for f in frames)
    # and only that one extra frame per sample is decoded once the GOP is known
    assert ingest.stats()["frames_decoded"] <= 10 + 3 * 2
