"""CaCoVID combinatorial policy optimisation: one training sample = G rollouts x several inner iterations.

Paper: Ma et al., "Contribution-aware Token Compression for Efficient Video Understanding via
Reinforcement Learning", arXiv 2602.01649, AAAI 2026. Implements the released trainer's loop as
described in ``research/seed-methods.md`` section 1.5 ("Rollouts per training sample",
"Inner loop (valid iterations)"), with the reward supplied by the caller (the frozen Video LLM's
answer correctness in ``bench/train_cacovid.py``; a pure-torch oracle in :mod:`.toy`).

Per sample: the old logits are computed once (iteration 0) and used both for sampling and as
pi_old in every inner iteration. Each iteration adapts the per-frame rate to the sample's token-
mode accuracy so far (initialised at 0.5), draws ``token_rollouts`` grouped token masks (rollout 0 =
top-k) and ``frame_rollouts`` frame-mode masks, scores all of them with one batched reward call,
appends the rewards to the sample's memory, normalises advantages over that memory (per mode), and
takes one optimiser step on L_token + L_frame (+ optional KL to Bernoulli(0.5)). The released
"content" rollout only feeds the unused mode head and is omitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from compression.cacovid.objective import (
    EPS_HIGH,
    EPS_LOW,
    adapt_rate,
    bernoulli_logprob,
    frame_loss,
    group_advantages,
    kl_to_half,
    token_loss,
)
from compression.cacovid.policy import CompressionPolicy
from compression.cacovid.sampler import frame_masks, grouped_token_masks, noisy_topk_masks, sampling_units

# rewards(masks [B, F, N] bool) -> [B] float in [0, 1]
RewardFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class RLConfig:
    """Hyper-parameters of the released trainer (run_llava_onevision.sh defaults) unless noted."""

    token_rollouts: int = 23  # G*3/4 - 1 with G = 32
    frame_rollouts: int = 8  # G/4
    inner_iters: int = 5  # num_iter_for_item
    max_sample_rate: float = 0.02  # starting per-frame rate of each sample
    min_rate: float = 0.01
    max_rate: float = 0.12
    group_size: int = 2
    max_group_prob: float = 2.0
    frame_ratio: float = 0.125
    eps_low: float = EPS_LOW
    eps_high: float = EPS_HIGH
    kl_weight: float = 0.0  # video_selection_kl_weight (script default 0)
    max_grad_norm: float = 5.0
    sampler: str = "grouped"  # ablation: "noisy" = top-k of scores + Gumbel noise
    noise: float = 1.0
    balance: bool = True  # ablation: kept/dropped balance weights off
    frame_loss: bool = True


@dataclass
class SampleInput:
    """One training sample for the policy. question [T, D], features [F, N, D] (LLM input space)."""

    question: Tensor
    features: Tensor

    @property
    def frame_index(self) -> Tensor:
        f, n, _ = self.features.shape
        return torch.arange(f, device=self.features.device).repeat_interleave(n)


@dataclass
class StepStats:
    """What one training sample did: rewards per iteration, losses, rate trajectory."""

    token_reward: list[float] = field(default_factory=list)
    frame_reward: list[float] = field(default_factory=list)
    topk_reward: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)

    @property
    def mean_reward(self) -> float:
        return sum(self.token_reward) / max(len(self.token_reward), 1)

    @property
    def mean_loss(self) -> float:
        return sum(self.loss) / max(len(self.loss), 1)


def _token_masks(scores: Tensor, k: int, rate: float, cfg: RLConfig, gen: torch.Generator) -> Tensor:
    if cfg.sampler == "noisy":
        return noisy_topk_masks(scores, k, cfg.token_rollouts, gen, cfg.noise)
    return grouped_token_masks(scores, k, rate, cfg.token_rollouts, gen, cfg.group_size, cfg.max_group_prob)


def train_sample(
    policy: CompressionPolicy,
    optimizer: torch.optim.Optimizer,
    sample: SampleInput,
    rewards: RewardFn,
    cfg: RLConfig,
    gen: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> StepStats:
    """Run the inner iterations for one sample; returns its statistics. Masks are [B, F, N] bool on CPU."""
    num_frames, n, _ = sample.features.shape
    frame_index = sample.frame_index
    policy.train()
    with torch.no_grad():
        old = policy(sample.question, sample.features.reshape(-1, sample.features.shape[-1]), frame_index)
    old_tok, old_frm = old.token_logits.float().cpu(), old.frame_logits.float().cpu()
    old_u = (old_tok[:, 1] - old_tok[:, 0]).reshape(num_frames, n)
    old_v = old_frm[:, 1] - old_frm[:, 0]
    mem_tok: list[Tensor] = []
    mem_frm: list[Tensor] = []
    rate, stats = cfg.max_sample_rate, StepStats()
    for it in range(cfg.inner_iters):
        if it:
            rate = adapt_rate(rate, float(torch.cat(mem_tok).mean()), cfg.min_rate, cfg.max_rate)
        rows, k = sampling_units(rate, num_frames, n)
        unit_rate = k / old_u.numel() * rows  # the rate the unit's k stands for (== rate up to rounding)
        tok_masks = _token_masks(old_u.reshape(rows, -1), k, unit_rate, cfg, gen).reshape(-1, num_frames, n)
        frm_masks, frm_actions = frame_masks(
            old_v, sample.features, k * rows, cfg.frame_rollouts, gen, cfg.frame_ratio
        )
        reward = rewards(torch.cat([tok_masks, frm_masks])).float().cpu()  # one batched call
        r_tok, r_frm = reward[: cfg.token_rollouts], reward[cfg.token_rollouts :]
        mem_tok.append(r_tok)
        mem_frm.append(r_frm)
        adv_tok = group_advantages(r_tok, torch.cat(mem_tok))
        adv_frm = group_advantages(r_frm, torch.cat(mem_frm))
        out = policy(sample.question, sample.features.reshape(-1, sample.features.shape[-1]), frame_index)
        dev = out.token_logits.device
        actions = tok_masks.reshape(cfg.token_rollouts, -1)
        loss = token_loss(
            out.token_logits,
            bernoulli_logprob(old_tok, actions).to(dev),
            actions.to(dev),
            adv_tok.to(dev),
            cfg.balance,
            cfg.eps_low,
            cfg.eps_high,
        )
        if cfg.frame_loss and cfg.frame_rollouts:
            loss = loss + frame_loss(
                out.frame_logits,
                bernoulli_logprob(old_frm, frm_actions).to(dev),
                frm_actions.to(dev),
                adv_frm.to(dev),
                cfg.eps_low,
                cfg.eps_high,
            )
        if cfg.kl_weight:
            loss = loss + cfg.kl_weight * kl_to_half(out.token_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        stats.token_reward.append(float(r_tok.mean()))
        stats.frame_reward.append(float(r_frm.mean()) if r_frm.numel() else float("nan"))
        stats.topk_reward.append(float(r_tok[0]))
        stats.loss.append(float(loss.detach()))  # CPU-GPU sync, once per iteration
        stats.rate.append(rate)
    return stats


@torch.no_grad()
def topk_masks_for(policy: CompressionPolicy, sample: SampleInput, rate: float) -> Tensor:
    """The deterministic policy's masks at ``rate``: top-k of u per sampling unit. Returns [1, F, N] bool."""
    policy.eval()
    num_frames, n, d = sample.features.shape
    out = policy(sample.question, sample.features.reshape(-1, d), sample.frame_index)
    rows, k = sampling_units(rate, num_frames, n)
    scores = out.token_scores.float().cpu().reshape(rows, -1)
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)
    return mask.reshape(1, num_frames, n)
