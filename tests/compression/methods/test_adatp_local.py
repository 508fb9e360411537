"""adatp-local: segmentation by adjacent-frame similarity, one representative per position per segment."""

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


def test_adatp_local_when_strict_then_one_token_per_position_per_segment():
    feats = scene_video(20, scene_length=5)
    _, out = build_method("adatp-local").update(build_method("adatp-local").init_state(),
                                               chunks_of(feats, 20, (4, 4))[0])
    pairs = out.side["segment"] * 16 + out.position
    assert pairs.unique().numel() == len(out) == 4 * 16
    assert out.frame.unique().tolist() == [0, 5, 10, 15], "the representative is the segment's first frame"


def test_adatp_local_when_dedup_tau_set_then_changed_positions_are_kept_inside_a_segment():
    feats = scene_video(6, scene_length=6, noise=0.0)
    # one position changes while the frame as a whole stays similar
    feats[4:, 3] = torch.randn(16, generator=torch.Generator().manual_seed(0))
    method = build_method("adatp-local:tau=0.5,dedup_tau=0.9")
    _, out = method.update(method.init_state(), chunks_of(feats, 6, (4, 4))[0])
    assert out.side["segment"].unique().tolist() == [0]
    assert len(out) == 17 and int(out.frame[-1]) == 4 and int(out.position[-1]) == 3


def test_adatp_local_when_max_segment_frames_set_then_long_segments_are_split():
    feats = scene_video(12, scene_length=12)
    method = build_method("adatp-local:max_segment_frames=4")
    _, out = method.update(method.init_state(), chunks_of(feats, 12, (4, 4))[0])
    assert out.side["segment"].unique().tolist() == [0, 1, 2] and out.frame.unique().tolist() == [0, 4, 8]
