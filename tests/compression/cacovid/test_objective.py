"""Specification of the CaCoVID objective (the released trainer, LivingFutureLab/CaCoVID grpo_trainer.py)."""

from __future__ import annotations

import torch

from compression.cacovid.objective import (
    adapt_rate,
    balance_weights,
    bernoulli_logprob,
    frame_loss,
    group_advantages,
    token_loss,
)


def test_token_loss_when_keeping_token_zero_is_always_right_then_gradient_favours_it() -> None:
    # given two tokens, keep one; rollouts keeping token 0 answer right (reward 1), keeping token 1 wrong
    logits = torch.zeros(2, 2, requires_grad=True)
    actions = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.bool)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    adv = group_advantages(rewards)
    logp_old = bernoulli_logprob(logits.detach(), actions)
    # when
    token_loss(logits, logp_old, actions, adv).backward()
    # then gradient descent raises token 0's keep score u0 = z01 - z00 and lowers u1
    step = -logits.grad
    assert step[0, 1] - step[0, 0] > 0, f"keep score of the right token must rise: {step}"
    assert step[1, 1] - step[1, 0] < 0, f"keep score of the wrong token must fall: {step}"


def test_token_loss_when_ratio_is_outside_the_clip_then_no_gradient() -> None:
    # given a current policy far more likely to keep than the old one, positive advantage
    logits = torch.tensor([[0.0, 3.0]], requires_grad=True)
    actions = torch.tensor([[True]])
    logp_old = torch.log(torch.tensor([[0.5]]))
    token_loss(logits, logp_old, actions, torch.tensor([1.0])).backward()
    assert torch.allclose(logits.grad, torch.zeros(1, 2)), "ratio > 1 + 0.28 with A > 0 is clipped"


def test_balance_weights_when_two_percent_kept_then_equal_totals() -> None:
    actions = torch.zeros(1, 100, dtype=torch.bool)
    actions[0, :2] = True
    w = balance_weights(actions)
    assert torch.isclose(w[0, :2].sum(), w[0, 2:].sum()), "kept and dropped carry equal total weight"
    assert torch.isclose(w[0, 0], torch.tensor(0.98))


def test_group_advantages_when_memory_given_then_normalised_over_memory() -> None:
    adv = group_advantages(torch.tensor([1.0, 0.0]), memory=torch.tensor([1.0, 0.0, 0.0, 0.0]))
    mem = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(adv, (torch.tensor([1.0, 0.0]) - 0.25) / (mem.std() + 1e-4))
    assert torch.allclose(group_advantages(torch.ones(4)), torch.zeros(4)), "all equal -> no signal"


def test_frame_loss_sign() -> None:
    logits = torch.zeros(2, 2, requires_grad=True)
    actions = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    frame_loss(logits, bernoulli_logprob(logits.detach(), actions), actions, adv).backward()
    assert (-logits.grad[0, 1] + logits.grad[0, 0]) > 0


def test_adapt_rate_when_easy_or_hard_then_halves_or_doubles_within_bounds() -> None:
    assert adapt_rate(0.02, 0.9) == 0.01
    assert adapt_rate(0.01, 1.0) == 0.01
    assert adapt_rate(0.02, 0.1) == 0.04
    assert adapt_rate(0.1, 0.0) == 0.12
    assert adapt_rate(0.02, 0.5) == 0.02
