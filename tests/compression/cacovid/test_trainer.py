"""Specification of the CaCoVID training loop on the pure-torch toy reward (the released grpo_trainer.py)."""

from __future__ import annotations

import torch

from compression.cacovid.policy import CompressionPolicy, ModelSignature, PolicyConfig
from compression.cacovid.toy import ToySpec, ToyTask
from compression.cacovid.trainer import RLConfig, topk_masks_for, train_sample


def _held_out_reward(policy: CompressionPolicy, task: ToyTask, rate: float) -> float:
    held = [task.sample(100_000 + i) for i in range(32)]
    return sum(float(task.rewards(s, topk_masks_for(policy, s.input, rate))[0]) for s in held) / len(held)


def test_train_sample_when_reward_needs_the_question_then_held_out_reward_rises() -> None:
    # given a toy task where only tokens matching the question's concept earn the reward
    torch.manual_seed(0)
    task = ToyTask(ToySpec(frames=4, tokens_per_frame=16, distractors=4))
    cfg = PolicyConfig(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, rope_theta=1e4)
    policy = CompressionPolicy(cfg, ModelSignature.of("toy", (10, 32)))
    opt = torch.optim.AdamW(policy.param_groups(3e-3), weight_decay=0.01)
    rl = RLConfig(token_rollouts=15, frame_rollouts=4, inner_iters=2, max_sample_rate=1 / 16, min_rate=1 / 16)
    gen = torch.Generator().manual_seed(0)
    before = _held_out_reward(policy, task, 1 / 16)
    # when
    rates = []
    for step in range(30):
        sample = task.sample(step)
        stats = train_sample(policy, opt, sample.input, lambda m, s=sample: task.rewards(s, m), rl, gen)
        rates += stats.rate
        assert len(stats.loss) == 2 and all(torch.isfinite(torch.tensor(stats.loss)))
    # then
    after = _held_out_reward(policy, task, 1 / 16)
    assert after > before + 0.2, f"held-out reward {before:.2f} -> {after:.2f}"
    assert max(rates) > 1 / 16, "hard samples get a higher rate"
