"""Uniform: evenly spaced, and chunk by chunk equals the whole video."""

from __future__ import annotations

import pytest
import torch

from compression.registry import SelectContext, build_method
from compression.tokens import TokenBlock
from tests.compression.helpers import assert_same_tokens, chunks_of, run_chunked, scene_video


@pytest.mark.parametrize("spec", ["uniform:ratio=0.25", "uniform:ratio=0.4,mode=temporal", "uniform:ratio=1.0"])
def test_uniform_when_run_chunk_by_chunk_then_equals_the_whole_video(spec):
    # given a 24-frame video as one block and as three chunks of 8
    feats = scene_video(24, scene_length=5)
    whole = chunks_of(feats, 24, (4, 4))[0]
    method = build_method(spec)
    # when compressed both ways
    _, all_at_once = method.update(method.init_state(), whole)
    chunked = run_chunked(method, chunks_of(feats, 8, (4, 4)))
    # then the results are identical
    assert_same_tokens(chunked, all_at_once)


def test_uniform_when_spatial_then_keeps_the_same_evenly_spaced_positions_in_every_frame():
    block = TokenBlock(torch.randn(3, 16, 2), torch.arange(3, dtype=torch.float64), (4, 4))
    _, out = build_method("uniform:ratio=0.25").update({}, block)
    assert (out.row * 4 + out.col).tolist() == [0, 4, 8, 12] * 3


def test_uniform_select_when_budget_given_then_indices_are_evenly_spaced():
    tokens = chunks_of(scene_video(4, 4), 4, (4, 4))[0].to_tokenset()  # 64 tokens
    out = build_method("uniform").select(tokens, 8, SelectContext())
    assert (out.frame * 16 + out.row * 4 + out.col).tolist() == list(range(0, 64, 8))


@pytest.mark.parametrize(("ratio", "per_frame"), [(0.05, 1), (0.0, 0), (0.5, 5)])
def test_uniform_when_ratio_rounds_to_nothing_then_still_keeps_one_token_per_frame(ratio, per_frame):
    # given 3 frames of a 3x3 grid (vidmem-tiny's): 5 % of 9 tokens rounds to none
    block = TokenBlock(torch.randn(3, 9, 2), torch.arange(3, dtype=torch.float64), (3, 3))
    # when stage 1 keeps that ratio
    _, out = build_method(f"uniform:ratio={ratio}").update({}, block)
    # then every frame keeps at least one token unless the ratio is exactly zero
    assert out.frame.tolist() == [f for f in range(3) for _ in range(per_frame)]
