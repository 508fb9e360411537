"""The released CaCoVID rules (LivingFutureLab/CaCoVID) pinned on fixed tensors.

Every expected value below was worked out by hand from a reading of the release
(``CompressionPolicy.sample_token_eval``, ``sample_token``, ``sample_frame``, ``div_sample``;
``GRPOTrainer.compute_loss``); the comments show the arithmetic.
"""

from __future__ import annotations

import math

import torch

from compression.cacovid.policy import CompressionPolicy, ModelSignature, PolicyConfig
from compression.cacovid.sampler import frame_masks, group_sizes, grouped_token_masks, num_rank_groups
from compression.cacovid.toy import ToySpec, ToyTask
from compression.cacovid.trainer import Replay, RLConfig, replay_loss, train_sample
from compression.registry import SelectContext, build_method
from compression.tokens import TokenSet


def _clip(frames: int, per_frame: int) -> TokenSet:
    """frames x per_frame tokens; token score u = -(index inside its frame), so a frame's top-q are its first q."""
    k = frames * per_frame
    idx = torch.arange(k)
    feats = torch.zeros(k, 2)
    feats[:, 0] = -(idx % per_frame).float()
    return TokenSet(feats, (idx // per_frame).double(), idx // per_frame, torch.zeros(k, dtype=torch.int64),
                    idx % per_frame, torch.ones(k), {}, (1, per_frame))


class _Scores:
    def __init__(self, v: list[float]) -> None:
        self.v = torch.tensor(v)

    def score(self, question: str, tokens: TokenSet, hooks: object) -> tuple[torch.Tensor, torch.Tensor]:
        return tokens.features[:, 0], self.v


# v = [-3, -2.55, -2.49]: max|v| = 3, so 3 v / max|v| = v; softmax(v) = [0.2362, 0.3704, 0.3934] (inside the clip
# [1/6, 1/2]). K = 3 x 40 = 120, budget 30: R = 0.25, B_imp = 15; caps = int(0.5 * 40 * 1.5 * 0.25) = 7.
# q = round(15 * shares) = round([3.543, 5.557, 5.900]) = [4, 6, 6] (sum 16 > 15): the release takes one from the
# largest quota, the first of equals (frame 1) -> [4, 5, 6].
V = [-3.0, -2.55, -2.49]


def test_cacovid_quotas_when_rounding_overshoots_then_the_largest_quota_gives_one_back():
    method = build_method("cacovid", scorer=_Scores(V))
    assert method.frame_quotas(torch.tensor(V), torch.full((3,), 40), 30, 120).tolist() == [4, 5, 6]
    # the former vidmem repair took from the frame most above its ideal share (frame 0: 4 - 3.543)
    shares = build_method("cacovid:quotas=shares", scorer=_Scores(V))
    assert shares.frame_quotas(torch.tensor(V), torch.full((3,), 40), 30, 120).tolist() == [3, 6, 6]


def test_cacovid_mask_when_released_rule_then_quotas_then_evenly_spaced_fill():
    # given the clip above, where each frame's top-q tokens are its first q
    tokens = _clip(3, 40)
    # when 30 tokens are kept
    out = build_method("cacovid", scorer=_Scores(V)).select(tokens, 30, SelectContext("q", None))
    # then 15 quota tokens (frame f keeps tokens 0..q_f-1) and 15 more at linspace(0, 104, 15).round() of the
    # 105 unselected tokens in time order: 0 7 15 22 30 | 37 45 52 59 67 | 74 82 89 97 104, i.e. frame 0 tokens
    # 4 11 19 26 34 (rest index + 4), frame 1 tokens 6 14 21 28 36 (rest index - 36 + 5), frame 2 tokens
    # 9 17 24 32 39 (rest index - 71 + 6)
    expected = ([0, 1, 2, 3, 4, 11, 19, 26, 34] + [40 + t for t in (0, 1, 2, 3, 4, 6, 14, 21, 28, 36)]
                + [80 + t for t in (0, 1, 2, 3, 4, 5, 9, 17, 24, 32, 39)])
    assert (out.frame * 40 + out.col).tolist() == expected


def test_cacovid_quotas_when_grid_is_tiny_then_the_release_gives_the_first_frames_one_each():
    # 16 frames x 9 tokens, budget 7: B_imp = 3.5, cap = int(0.5 * 9 * 1.5 * 7/144) = 0, so torch.clamp(q, 1, 0) = 0
    # everywhere; the repair then adds one to the smallest quota, the first of equals, three times
    v = torch.zeros(16)
    v[[2, 9, 13]] = torch.tensor([3.0, 2.0, 1.0])
    quotas = build_method("cacovid", scorer=_Scores([0.0])).frame_quotas(v, torch.full((16,), 9), 7, 144)
    assert torch.nonzero(quotas).flatten().tolist() == [0, 1, 2] and int(quotas.sum()) == 3


def test_num_rank_groups_when_rate_is_nominal_then_the_release_count():
    # int(1 / 0.02 / 2) = 25 groups; the former k/N = 4/196 gave int(1 / 0.0204 / 2) = 24
    assert num_rank_groups(196, 4, 0.02) == 25
    assert num_rank_groups(196, 4, 4 / 196) == 24
    assert num_rank_groups(196, 24, 0.12) == 4  # int(4.17)
    assert num_rank_groups(9, 3, 0.02) == 3, "lowered so each group holds k tokens (the release would raise)"


def test_grouped_token_masks_when_rate_is_002_then_every_draw_lies_inside_one_of_25_rank_groups():
    # ranks follow token ids; 196 = 21 groups of 8 + 4 groups of 7
    scores = -torch.arange(196, dtype=torch.float32)[None] * 0.01
    masks = grouped_token_masks(scores, 4, 0.02, rollouts=300, generator=torch.Generator().manual_seed(0))
    bounds = torch.cumsum(torch.tensor(group_sizes(196, 25)), 0)
    for m in masks[1:, 0]:
        group = torch.bucketize(torch.nonzero(m).flatten(), bounds, right=True)
        assert group.unique().numel() == 1, torch.nonzero(m).flatten().tolist()


def test_frame_masks_when_frames_are_chosen_then_one_joint_dpc_knn_over_them():
    # given frame 0 with four far-apart tokens and frame 1 with four near-duplicates (density ~1 each)
    feats = torch.zeros(4, 4, 2)
    feats[0] = torch.tensor([[10.0, 0], [0, 10], [-10, 0], [0, -10]])
    feats[1, :, 0] = torch.tensor([0.0, 0.01, 0.02, 0.03])
    feats[2:] = 50.0
    # when rollout 0 takes the top-2 frames (ceil(4 * 0.5)) and keeps 4 tokens
    masks, actions = frame_masks(torch.tensor([1.0, 0.5, -1.0, -1.0]), feats, 4, rollouts=1, frame_ratio=0.5)
    # then the joint density peaks are frame 1's four tokens (density*delta ~1e-2 and more, against ~1e-5 for the
    # isolated tokens); a per-frame split would have kept 2 + 2
    assert actions[0].tolist() == [True, True, False, False]
    assert masks[0].sum(-1).tolist() == [0, 4, 0, 0]


def test_replay_loss_when_two_iterations_stored_then_every_rollout_is_replayed():
    # given pi_old = Bernoulli(1/2) for both tokens; the current policy keeps token 0 with p = 3/4 (ratio 1.5 for
    # keep, 0.5 for drop) and token 1 with p = 1/2 (ratio 1)
    old = torch.zeros(2, 2)
    now = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    memory = Replay()
    keep0, keep1 = torch.tensor([True, False]), torch.tensor([False, True])
    memory.add(torch.stack([keep0, keep1]), torch.tensor([1.0, 0.0]), torch.zeros(2, 1, dtype=torch.bool),
               torch.zeros(2))
    memory.add(torch.stack([keep0, keep1]), torch.tensor([1.0, 1.0]), torch.zeros(2, 1, dtype=torch.bool),
               torch.zeros(2))
    cfg = RLConfig(frame_loss=False)
    # memory rewards [1, 0, 1, 1]: mean 0.75, unbiased std 0.5, A+ = 0.25/0.5001, A- = -0.75/0.5001; balance weights
    # are 1/2 everywhere (one of two kept), so each rollout's loss is the mean of its two token losses:
    # keep0 with A+: -(1.28 A+ + A+)/2 (ratio 1.5 clipped at 1.28); keep1 with A-: -(0.8 A- + A-)/2 (ratio 0.5
    # clipped at 0.8 for a negative advantage); keep1 with A+: -(0.5 A+ + A+)/2
    a_pos, a_neg = 0.25 / 0.5001, -0.75 / 0.5001
    replayed = (-1.14 * a_pos - 0.9 * a_neg - 1.14 * a_pos - 0.75 * a_pos) / 4 / (1 + 1e-7)
    current = (-1.14 * a_pos - 0.75 * a_pos) / 2 / (1 + 1e-7)
    for replay, expected in ((True, replayed), (False, current)):
        actions, adv, frames, adv_f = memory.batch(replay)
        loss = replay_loss(now, torch.zeros(1, 2), old, torch.zeros(1, 2), actions, adv, frames, adv_f, cfg)
        assert math.isclose(float(loss), expected, rel_tol=1e-5), (replay, float(loss), expected)


def test_train_sample_when_iterating_then_the_loss_replays_the_growing_memory_and_groups_use_the_nominal_rate():
    task = ToyTask(ToySpec(frames=2, tokens_per_frame=196, dim=16))
    cfg = PolicyConfig(hidden_size=16, num_heads=2, num_kv_heads=1, intermediate_size=32, rope_theta=1e4)
    policy = CompressionPolicy(cfg, ModelSignature.of("toy", (10, 16)))
    opt = torch.optim.AdamW(policy.param_groups(1e-3))
    sample = task.sample(0)
    for replay, seen in ((True, [3, 6, 9]), (False, [3, 3, 3])):
        rl = RLConfig(token_rollouts=3, frame_rollouts=2, inner_iters=3, min_rate=0.02, max_rate=0.02, replay=replay)
        stats = train_sample(policy, opt, sample.input, lambda m: task.rewards(sample, m), rl,
                             torch.Generator().manual_seed(0))
        assert stats.replayed == seen and stats.groups == [25, 25, 25]
