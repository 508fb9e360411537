"""Differential token drop: drops what did not change since the last kept token at that position."""

from __future__ import annotations

import torch

from compression.registry import build_method
from compression.tokens import TokenBlock
from tests.compression.helpers import assert_same_tokens, chunks_of, run_chunked, scene_video


def test_dtd_when_run_chunk_by_chunk_then_equals_the_whole_video():
    # given a 30-frame video of 3 static scenes, as one block and as chunks of 8 (boundaries mid-scene)
    feats = scene_video(30, scene_length=10, noise=0.3)
    method = build_method("dtd:threshold=0.97")
    _, whole = method.update(method.init_state(), chunks_of(feats, 30, (4, 4))[0])
    chunked = run_chunked(method, chunks_of(feats, 8, (4, 4)))
    # then the results are identical, and some but not all tokens were dropped
    assert_same_tokens(chunked, whole)
    assert 3 * 16 <= len(whole) < 30 * 16


def test_dtd_when_scene_is_static_then_only_the_first_frame_and_cuts_are_kept():
    feats = scene_video(12, scene_length=6, noise=0.01)
    _, out = build_method("dtd").update({"ref": None}, chunks_of(feats, 12, (4, 4))[0])
    assert out.frame.unique().tolist() == [0, 6], "static frames after the first must be dropped"


def test_dtd_when_one_region_changes_then_only_that_region_is_kept():
    # given a static scene where position 5 changes in frame 3
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 16, 8, generator=gen).repeat(5, 1, 1)
    feats[3:, 5] = torch.randn(8, generator=gen)
    block = TokenBlock(feats, torch.arange(5, dtype=torch.float64), (4, 4))
    _, out = build_method("dtd").update({"ref": None}, block)
    later = out.gather(torch.nonzero(out.frame > 0, as_tuple=True)[0])
    assert later.frame.tolist() == [3] and later.position.tolist() == [5]


def test_dtd_when_reference_is_previous_then_slow_drift_is_dropped_but_kept_reference_catches_it():
    # given a token drifting slowly: each step is small, the total change is large
    steps = torch.linspace(0, 1.5, 12)
    base, other = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    feats = (base[None] * torch.cos(steps)[:, None] + other[None] * torch.sin(steps)[:, None])[:, None, :]
    block = TokenBlock(feats, torch.arange(12, dtype=torch.float64), (1, 1))
    _, kept_ref = build_method("dtd:threshold=0.95").update({"ref": None}, block)
    _, prev_ref = build_method("dtd:threshold=0.95,reference=previous").update({"ref": None}, block)
    assert len(prev_ref) == 1, "frame-to-frame steps are all below the threshold"
    assert len(kept_ref) > 1, "against the last kept token the drift accumulates and is kept"
