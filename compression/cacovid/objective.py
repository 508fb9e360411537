"""CaCoVID combinatorial policy objective, advantages and per-sample retention adaptation.

Paper: Ma et al., "Contribution-aware Token Compression for Efficient Video Understanding via
Reinforcement Learning", arXiv 2602.01649, AAAI 2026 ("combinatorial policy optimization"). The
paper's equations could not be read; this follows the released trainer (LivingFutureLab/CaCoVID,
``src/r1-v/src/open_r1/trainer/grpo_trainer.py``, ``compute_loss`` and the rate adaptation in
``_inner_training_loop``):

- :func:`group_advantages`: A_g = (R_g - mean(R)) / (std(R) + 1e-4), mean and std over the memory
  of every rollout of the sample so far (token and frame modes normalised separately); the loss
  runs over every stored rollout (:class:`compression.cacovid.trainer.Replay`);
- :func:`bernoulli_logprob`: each token/frame action a in {drop=0, keep=1} scored under
  log_softmax(z)[a] (an independent Bernoulli per token);
- :func:`token_loss`: r = exp(logp - logp_old), l = -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)
  with eps_low = 0.2, eps_high = 0.28 (DAPO-style asymmetric clip), kept/dropped balance weights
  w = a*(1 - abar) + (1 - a)*abar (detached), L_token = mean_g sum_i w*l / (sum_i w + 1e-7);
- :func:`frame_loss`: the same clipped surrogate on frame actions, plain mean, no weights;
- :func:`kl_to_half`: optional k3 estimate of KL to Bernoulli(0.5) (weight 0 by default, as in the
  release's script). Deviation: it is the expectation over both actions of each token, plain mean;
  the release evaluates it on the replayed actions with the balance weights (only when enabled);
- :func:`adapt_rate`: acc >= 0.875 halves the rate (floor 0.01), acc <= 0.125 doubles it (cap 0.12).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS_LOW = 0.2
EPS_HIGH = 0.28


def group_advantages(rewards: Tensor, memory: Tensor | None = None, eps: float = 1e-4) -> Tensor:
    """rewards [R] of this iteration, memory [M] every reward of the sample so far (including these).

    Returns advantages [R] normalised by the memory's mean and (unbiased) std.
    """
    ref = rewards if memory is None or memory.numel() == 0 else memory
    ref = ref.float()
    std = ref.std() if ref.numel() > 1 else torch.zeros(())
    return (rewards.float() - ref.mean()) / (std + eps)


def bernoulli_logprob(logits: Tensor, actions: Tensor) -> Tensor:
    """logits [..., K, 2], actions [R, K] bool/int -> log pi(a) [R, K] (logits broadcast over R)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [..., K, 2]
    a = actions.long()
    return torch.where(a.bool(), logp[..., 1], logp[..., 0]).expand(a.shape)


def balance_weights(actions: Tensor) -> Tensor:
    """actions [R, K] -> w [R, K]: kept tokens weigh (1 - kept fraction), dropped ones the kept fraction."""
    a = actions.float()
    kept = a.mean(dim=-1, keepdim=True)
    return (a * (1 - kept) + (1 - a) * kept).detach()


def clipped_surrogate(logp: Tensor, logp_old: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """Per-action loss [R, K]: -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A), r = exp(logp - logp_old); adv [R]."""
    ratio = torch.exp(logp - logp_old.detach())
    a = adv[:, None].to(ratio.dtype)
    return -torch.minimum(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a)


def token_loss(
    logits: Tensor,
    logp_old: Tensor,
    actions: Tensor,
    adv: Tensor,
    balance: bool = True,
    eps_low: float = EPS_LOW,
    eps_high: float = EPS_HIGH,
) -> Tensor:
    """L_token: logits [K, 2] (current policy), logp_old [R, K], actions [R, K], adv [R] -> scalar."""
    if actions.shape[0] == 0:
        return logits.sum() * 0
    loss = clipped_surrogate(bernoulli_logprob(logits, actions), logp_old, adv, eps_low, eps_high)
    w = balance_weights(actions) if balance else torch.ones_like(loss)
    return ((w * loss).sum(-1) / (w.sum(-1) + 1e-7)).mean()


def frame_loss(
    logits: Tensor,
    logp_old: Tensor,
    actions: Tensor,
    adv: Tensor,
    eps_low: float = EPS_LOW,
    eps_high: float = EPS_HIGH,
) -> Tensor:
    """L_frame: logits [F, 2], logp_old [R, F], actions [R, F], adv [R] -> scalar (plain mean)."""
    if actions.shape[0] == 0:
        return logits.sum() * 0
    return clipped_surrogate(bernoulli_logprob(logits, actions), logp_old, adv, eps_low, eps_high).mean()


def kl_to_half(logits: Tensor) -> Tensor:
    """Unbiased k3 estimate of KL(pi || Bernoulli(0.5)) per token, averaged: logits [K, 2] -> scalar."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    log_ratio = torch.log(torch.tensor(0.5)) - logp  # log(ref/pi)
    return (p * (torch.exp(log_ratio) - log_ratio - 1)).sum(-1).mean()


def adapt_rate(rate: float, accuracy: float, low: float = 0.01, high: float = 0.12) -> float:
    """Per-sample retention: easy samples (acc >= 0.875) get half the rate, hard ones (acc <= 0.125) twice."""
    if accuracy >= 0.875:
        return max(rate / 2, low)
    if accuracy <= 0.125:
        return min(rate * 2, high)
    return rate
