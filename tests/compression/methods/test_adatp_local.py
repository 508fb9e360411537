"""adatp-local: segmentation by adjacent-frame similarity, spatial de-duplication inside a segment."""

from __future__ import annotations

import torch

from compression.registry import build_method
from tests.compression.helpers import assert_same_tokens, chunks_of, run_chunked, scene_video


def test_adatp_local_when_run_chunk_by_chunk_then_segmentation_equals_the_whole_video():
    # given 4 scenes of 7 frames, as one block and as chunks of 8 (segments cross chunk boundaries)
    feats = scene_video(28, scene_length=7)
    method = build_method("adatp-local")
    _, whole = method.update(method.init_state(), chunks_of(feats, 28, (4, 4))[0])
    chunked = run_chunked(method, chunks_of(feats, 8, (4, 4)))
    # then the same tokens and the same stream-wide segment ids come out
    assert_same_tokens(chunked, whole)
    assert whole.side["segment"].unique().tolist() == [0, 1, 2, 3]


def test_adatp_local_when_dedup_first_then_one_token_per_position_per_segment():
    feats = scene_video(20, scene_length=5)
    method = build_method("adatp-local:dedup=first")
    _, out = method.update(method.init_state(), chunks_of(feats, 20, (4, 4))[0])
    pairs = out.side["segment"] * 16 + out.position
    assert pairs.unique().numel() == len(out) == 4 * 16
    assert out.frame.unique().tolist() == [0, 5, 10, 15], "the representative is the segment's first frame"


def test_adatp_local_when_a_position_changes_inside_a_segment_then_its_new_tokens_are_kept():
    feats = scene_video(6, scene_length=6, noise=0.0)
    # one position changes while the frame as a whole stays similar
    feats[4:, 3] = torch.randn(16, generator=torch.Generator().manual_seed(0))
    for spec, expected in (("adatp-local:tau=0.5", 17), ("adatp-local:tau=0.5,dedup=first", 16)):
        method = build_method(spec)
        _, out = method.update(method.init_state(), chunks_of(feats, 6, (4, 4))[0])
        assert out.side["segment"].unique().tolist() == [0]
        # by default the changed token of frame 4 is no duplicate of frame 0's (frame 5 repeats frame 4's);
        # ``dedup=first`` drops every later frame of the segment, changed or not
        assert len(out) == expected, spec
    assert int(out.frame[-1]) == 0


def test_adatp_local_when_noise_stays_below_the_threshold_then_static_positions_are_stored_once():
    feats = scene_video(10, scene_length=10, noise=0.05)
    method = build_method("adatp-local")
    _, out = method.update(method.init_state(), chunks_of(feats, 10, (4, 4))[0])
    assert len(out) == 16 and out.frame.unique().tolist() == [0]


def test_adatp_local_when_max_segment_frames_set_then_long_segments_are_split():
    feats = scene_video(12, scene_length=12)
    method = build_method("adatp-local:max_segment_frames=4")
    _, out = method.update(method.init_state(), chunks_of(feats, 12, (4, 4))[0])
    assert out.side["segment"].unique().tolist() == [0, 1, 2] and out.frame.unique().tolist() == [0, 4, 8]
