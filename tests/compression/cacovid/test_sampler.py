"""Specification of the CaCoVID rollout samplers (the released compression_policy.py / sample_utils.py)."""

from __future__ import annotations

import pytest
import torch

from compression.cacovid.sampler import (
    cap_probs,
    dpc_knn_select,
    frame_masks,
    grouped_token_masks,
    noisy_topk_masks,
    num_rank_groups,
    per_frame_k,
    sampling_units,
    topk_mask,
)


@pytest.mark.parametrize("n,rate", [(196, 0.02), (196, 0.12), (16, 0.02), (9, 0.5), (1, 0.1), (37, 0.01)])
def test_grouped_token_masks_when_any_rate_then_exactly_k_per_frame(n: int, rate: float) -> None:
    # given sharp and flat scores over several frames
    g = torch.Generator().manual_seed(0)
    for scores in (torch.randn(5, n, generator=g) * 10, torch.zeros(5, n)):
        k = per_frame_k(rate, n)
        # when
        masks = grouped_token_masks(scores, k, rate, rollouts=17, generator=g)
        # then
        assert masks.shape == (17, 5, n)
        assert (masks.sum(-1) == k).all(), f"wrong count: {masks.sum(-1).unique().tolist()} != {k}"
        assert torch.equal(masks[0], topk_mask(scores, k)), "rollout 0 must be the per-frame top-k"


def test_grouped_token_masks_when_policy_is_sharp_then_draws_stay_near_the_top() -> None:
    # given a frame where rank follows token id
    n, rate = 196, 0.02
    k = per_frame_k(rate, n)
    scores = -torch.arange(n, dtype=torch.float32)[None] * 0.5
    # when
    masks = grouped_token_masks(scores, k, rate, rollouts=400, generator=torch.Generator().manual_seed(1))
    # then the group cap spreads draws: the top group is drawn about 10% of the time, never all
    groups = num_rank_groups(n, k, rate)
    top = masks[:, 0, : n // groups].any(-1).float().mean().item()
    assert 0.05 < top < 0.2, f"top group drawn {top:.2f} of the time, cap is 0.1"
    assert masks[:, 0].nonzero()[:, 1].max() > n // 2, "lower groups must stay reachable"


@pytest.mark.parametrize("cap", [0.1, 0.25, 0.5, 0.9])
def test_cap_probs_when_mass_is_concentrated_then_caps_hold_and_rows_sum_to_one(cap: float) -> None:
    # given
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(50, 25, generator=g) * 6, dim=-1)
    # when
    q = cap_probs(p, cap)
    # then
    assert (q <= cap + 1e-6).all(), f"max {q.max():.4f} exceeds cap {cap}"
    assert torch.allclose(q.sum(-1), torch.ones(50), atol=1e-5)
    assert (q >= 1 / (25**2 + 25) - 1e-7).all(), "every entry stays reachable (floored at 1/n**2)"
    # the largest entry stays the largest
    assert (q.gather(1, p.argmax(-1, keepdim=True)) >= q.max(-1, keepdim=True).values - 1e-6).all()


def test_cap_probs_when_cap_is_infeasible_then_uniform() -> None:
    q = cap_probs(torch.tensor([[0.7, 0.2, 0.1]]), 0.2)
    assert torch.allclose(q, torch.full((1, 3), 1 / 3)), q


def test_frame_masks_when_sampling_frames_then_budget_matches_token_mode() -> None:
    # given 32 frames of 16 tokens, k = 2 per frame
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(32, 16, 8, generator=g)
    v = torch.randn(32, generator=g)
    # when
    masks, actions = frame_masks(v, feats, 64, rollouts=9, generator=g)
    # then
    assert (masks.flatten(1).sum(-1) == 64).all(), "frame mode keeps k*t tokens in total"
    assert (actions.sum(-1) == 4).all(), "ceil(32 * 0.125) frames"
    assert torch.equal(actions[0], torch.zeros(32, dtype=torch.bool).scatter_(0, v.topk(4).indices, True))
    assert not (masks.any(-1) & ~actions).any(), "tokens only from chosen frames"


def test_frame_masks_when_budget_exceeds_chosen_frames_then_more_frames() -> None:
    masks, actions = frame_masks(torch.zeros(4), torch.randn(4, 3, 2), 8, rollouts=3)
    assert (masks.flatten(1).sum(-1) == 8).all()
    assert (actions.sum(-1) == 3).all()


def test_sampling_units_when_grid_is_small_then_whole_clip_is_one_unit() -> None:
    assert sampling_units(0.02, 16, 196) == (16, 4), "per frame when round(rate*N) >= 1"
    assert sampling_units(0.02, 16, 9) == (1, 3), "one unit of F*N tokens for vidmem-tiny's 3x3 grid"
    assert sampling_units(0.12, 16, 9) == (16, 1)


def test_noisy_topk_and_dpc_counts() -> None:
    g = torch.Generator().manual_seed(4)
    masks = noisy_topk_masks(torch.randn(3, 20, generator=g), 4, rollouts=6, generator=g)
    assert (masks.sum(-1) == 4).all()
    idx = dpc_knn_select(torch.randn(20, 5, generator=g), 7, generator=g)
    assert idx.unique().numel() == 7
