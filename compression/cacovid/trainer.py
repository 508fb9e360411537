"""CaCoVID combinatorial policy optimisation: one training sample = G rollouts x several inner iterations.

Paper: Ma et al., "Contribution-aware Token Compression for Efficient Video Understanding via
Reinforcement Learning", arXiv 2602.01649, AAAI 2026 ("combinatorial policy optimization"); the
paper's equations could not be read, so this is the released trainer's loop (LivingFutureLab/CaCoVID,
``grpo_trainer.py``: ``compute_loss``, the ``num_iter_for_item`` loop of ``_inner_training_loop``),
with the reward supplied by the caller (the frozen Video LLM's answer correctness in
``bench/train_cacovid.py``; a pure-torch oracle in :mod:`.toy`).

Per sample: the old logits are computed once (iteration 0) and used both for sampling and as
pi_old in every inner iteration. Each iteration adapts the per-frame rate to the sample's token-
mode accuracy so far (initialised at 0.5), draws ``token_rollouts`` grouped token masks (rollout 0 =
top-k; the rank-group count from the nominal rate) and ``frame_rollouts`` frame-mode masks, scores
all of them with one batched reward call and appends masks and rewards to the sample's replay
memory (:class:`Replay`). The loss replays every rollout stored for the sample, as the release
does: advantages are normalised over the whole memory (per mode) and L_token + L_frame (+ optional
KL to Bernoulli(0.5)) runs over all stored masks, up to ``inner_iters`` x rollouts of them; one
optimiser step per iteration. ``RLConfig.replay=False`` is a named ablation, not the default: the
loss then sees only the current iteration's rollouts (advantages still normalised over the memory).
The released "content" rollout only feeds the unused mode head and is omitted.
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
from compression.cacovid.sampler import (
    frame_masks,
    grouped_token_masks,
    noisy_topk_masks,
    num_rank_groups,
    sampling_units,
)

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
    replay: bool = True  # the loss replays every stored rollout of the sample (ablation: current ones only)


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
    groups: list[int] = field(default_factory=list)  # rank groups of the token-mode sampler per iteration
    replayed: list[int] = field(default_factory=list)  # token-mode rollouts in each iteration's loss

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


@dataclass
class Replay:
    """One sample's rollout memory: token actions [M, K] and frame actions [M', F] bool with their
    rewards. Bounded by construction: it lives for one sample (``inner_iters`` iterations)."""

    token_actions: list[Tensor] = field(default_factory=list)
    token_rewards: list[Tensor] = field(default_factory=list)
    frame_actions: list[Tensor] = field(default_factory=list)
    frame_rewards: list[Tensor] = field(default_factory=list)

    def add(self, tok: Tensor, r_tok: Tensor, frm: Tensor, r_frm: Tensor) -> None:
        self.token_actions.append(tok)
        self.token_rewards.append(r_tok)
        self.frame_actions.append(frm)
        self.frame_rewards.append(r_frm)

    def batch(self, replay: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(token actions [M, K], their advantages [M], frame actions [M', F], their advantages [M']) for
        the loss: every stored rollout when ``replay``, else the latest iteration's; advantages are
        normalised over the whole memory either way (the release's mean and std over the memory)."""
        mem_tok, mem_frm = torch.cat(self.token_rewards), torch.cat(self.frame_rewards)
        tok = torch.cat(self.token_actions) if replay else self.token_actions[-1]
        frm = torch.cat(self.frame_actions) if replay else self.frame_actions[-1]
        r_tok = mem_tok if replay else self.token_rewards[-1]
        r_frm = mem_frm if replay else self.frame_rewards[-1]
        return tok, group_advantages(r_tok, mem_tok), frm, group_advantages(r_frm, mem_frm)

    @property
    def accuracy(self) -> float:
        """Mean token-mode reward so far (the release's ``self.accuracy``)."""
        return float(torch.cat(self.token_rewards).mean())


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
    memory = Replay()
    rate, stats = cfg.max_sample_rate, StepStats()
    for it in range(cfg.inner_iters):
        if it:
            rate = adapt_rate(rate, memory.accuracy, cfg.min_rate, cfg.max_rate)
        rows, k = sampling_units(rate, num_frames, n)
        groups = num_rank_groups(old_u.numel() // rows, k, rate, cfg.group_size)
        tok_masks = _token_masks(old_u.reshape(rows, -1), k, rate, cfg, gen).reshape(-1, num_frames, n)
        frm_masks, frm_actions = frame_masks(
            old_v, sample.features, k * rows, cfg.frame_rollouts, gen, cfg.frame_ratio
        )
        reward = rewards(torch.cat([tok_masks, frm_masks])).float().cpu()  # one batched call
        r_tok, r_frm = reward[: cfg.token_rollouts], reward[cfg.token_rollouts :]
        memory.add(tok_masks.reshape(cfg.token_rollouts, -1), r_tok, frm_actions, r_frm)
        actions, adv_tok, frm_all, adv_frm = memory.batch(cfg.replay)
        out = policy(sample.question, sample.features.reshape(-1, sample.features.shape[-1]), frame_index)
        loss = replay_loss(out.token_logits, out.frame_logits, old_tok, old_frm, actions, adv_tok, frm_all, adv_frm,
                           cfg)
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
        stats.groups.append(groups)
        stats.replayed.append(int(actions.shape[0]))
    return stats


def replay_loss(token_logits: Tensor, frame_logits: Tensor, old_tok: Tensor, old_frm: Tensor, actions: Tensor,
                adv_tok: Tensor, frame_actions: Tensor, adv_frm: Tensor, cfg: RLConfig) -> Tensor:
    """L_token + L_frame (+ KL) over the replayed rollouts: logits [K, 2] / [F, 2] of the current policy,
    old logits (pi_old, iteration 0) on the CPU, actions [M, K] / [M', F] bool, advantages [M] / [M']."""
    dev = token_logits.device
    loss = token_loss(token_logits, bernoulli_logprob(old_tok, actions).to(dev), actions.to(dev), adv_tok.to(dev),
                      cfg.balance, cfg.eps_low, cfg.eps_high)
    if cfg.frame_loss and frame_actions.shape[0]:
        loss = loss + frame_loss(frame_logits, bernoulli_logprob(old_frm, frame_actions).to(dev),
                                 frame_actions.to(dev), adv_frm.to(dev), cfg.eps_low, cfg.eps_high)
    if cfg.kl_weight:
        loss = loss + cfg.kl_weight * kl_to_half(token_logits)
    return loss


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
