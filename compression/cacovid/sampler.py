"""CaCoVID rollout sampling: online combination-space sampling (token mode) and frame-mode rollouts.

Paper: Ma et al., "Contribution-aware Token Compression for Efficient Video Understanding via
Reinforcement Learning", arXiv 2602.01649, AAAI 2026 ("online combination space sampling"). The
paper's text could not be read; this implements the released trainer (LivingFutureLab/CaCoVID,
``compression_policy.py`` ``sample_token`` / ``sample_frame`` / ``div_sample`` and ``sample_utils.py``):

- :func:`cap_probs` - the recursive water-filling cap, after flooring at 1/n**2;
- :func:`grouped_token_masks` - per frame: softmax of the token scores, rank groups
  (G = max(int(1/rate/group_size), 1) groups from the nominal rate, :func:`num_rank_groups`; the
  first N mod G one larger), group masses capped at clip(max_group_prob/G, 0.1, 0.9), one group
  drawn per rollout, then k tokens drawn without replacement inside it from member probabilities
  clamped to [1/(2m), 2/m] with m = N // G (the release's nominal group size); rollout 0 is the
  deterministic per-frame top-k;
- :func:`frame_masks` - F_sel = ceil(t*frame_ratio) frames drawn without replacement from
  softmax(v) capped at 3/t (rollout 0 = top frames), then one joint DPC-kNN density-peak selection
  (:func:`dpc_knn_select`) of k*t tokens over all the chosen frames' original features together;
- :func:`noisy_topk_masks` - the ablation baseline: top-k of scores plus Gumbel noise.

Every mask keeps exactly k tokens per frame (token mode) or k*t tokens (frame mode): the reward
batch is budget-matched, as the released trainer asserts. Shapes: scores [F, N], masks [R, F, N].

Deviations, each only where the release would fail: :func:`sampling_units` - the release has 196
tokens per frame, so round(rate*N) >= 1 at every rate it uses; when round(rate*N) < 1 (vidmem-tiny
has N = 9) the whole clip is one sampling unit ([1, F*N]) with k = round(rate*F*N) tokens, so
training retention can go below one token per frame, as evaluation at 5-10% requires. G is lowered
so that every group holds at least k tokens (the release's draw of k tokens inside a smaller group
raises). Frame mode takes more frames when k*t tokens do not fit in F_sel frames.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def per_frame_k(rate: float, tokens_per_frame: int) -> int:
    """Tokens kept per frame at sample rate ``rate``: round(rate*N), at least 1, at most N."""
    return max(1, min(tokens_per_frame, round(rate * tokens_per_frame)))


def sampling_units(rate: float, frames: int, tokens_per_frame: int) -> tuple[int, int]:
    """(rows, k): per-frame units (rows = F) when round(rate*N) >= 1, else one unit of F*N tokens."""
    if round(rate * tokens_per_frame) >= 1 or frames <= 1:
        return frames, per_frame_k(rate, tokens_per_frame)
    return 1, per_frame_k(rate, frames * tokens_per_frame)


def cap_probs(p: Tensor, cap: float, floor: bool = True) -> Tensor:
    """Cap every probability at ``cap`` by water-filling; rows of p [..., n] sum to 1 on return.

    Entries are first floored at 1/n**2 (so every entry stays reachable) and renormalised. An entry
    above the cap is set to it and the excess spread over the uncapped entries in proportion to
    their mass, repeated until none exceeds the cap. A cap below 1/n is raised to 1/n (feasible).
    """
    n = p.shape[-1]
    cap = max(float(cap), 1.0 / n)
    p = p.double()
    if floor:
        p = p.clamp(min=1.0 / n**2)
    p = p / p.sum(-1, keepdim=True)
    fixed = torch.zeros_like(p, dtype=torch.bool)
    for _ in range(n):
        over = (p > cap * (1 + 1e-9)) & ~fixed
        if not over.any():
            break
        fixed |= over
        free_mass = (1.0 - cap * fixed.sum(-1, keepdim=True)).clamp(min=0)
        loose = torch.where(fixed, torch.zeros_like(p), p)
        loose = loose / loose.sum(-1, keepdim=True).clamp(min=1e-300) * free_mass
        p = torch.where(fixed, torch.full_like(p, cap), loose)
    return p.float()


def group_sizes(n: int, num_groups: int) -> list[int]:
    """Near-equal contiguous rank groups: the first ``n mod G`` groups hold one extra token."""
    base, extra = divmod(n, num_groups)
    return [base + (1 if g < extra else 0) for g in range(num_groups)]


def num_rank_groups(n: int, k: int, rate: float, group_size: int = 2) -> int:
    """G = max(int(1/rate/group_size), 1) from the nominal sample rate (the release's expression, so
    rate 0.02 gives 25 groups, not the 24 of k/N = 4/196), lowered so every group holds >= k tokens."""
    g = max(int(1.0 / rate / group_size), 1)
    return max(1, min(g, n // max(k, 1)))


def grouped_token_masks(
    scores: Tensor,
    k: int,
    rate: float,
    rollouts: int,
    generator: torch.Generator | None = None,
    group_size: int = 2,
    max_group_prob: float = 2.0,
) -> Tensor:
    """Token-mode rollouts by online combination-space sampling.

    scores [F, N] token scores u; ``rate`` the nominal sample rate (it sets the group count);
    returns bool masks [R, F, N] with exactly k True per frame; rollout 0 is the per-frame top-k.
    """
    num_frames, n = scores.shape
    k = min(k, n)
    masks = torch.zeros(rollouts, num_frames, n, dtype=torch.bool)
    if rollouts == 0 or num_frames == 0 or k == 0:
        return masks
    probs = torch.softmax(scores.detach().float().cpu(), dim=-1)  # [F, N]
    order = probs.argsort(dim=-1, descending=True, stable=True)  # [F, N] token ids by rank
    ranked = probs.gather(1, order)
    num_groups = num_rank_groups(n, k, rate, group_size)
    sizes = torch.tensor(group_sizes(n, num_groups))
    starts = torch.cumsum(sizes, 0) - sizes  # [G]
    rank_group = torch.repeat_interleave(torch.arange(num_groups), sizes)  # [N]
    group_mass = torch.zeros(num_frames, num_groups).index_add_(1, rank_group, ranked)  # [F, G]
    cap = min(max(max_group_prob / num_groups, 0.1), 0.9)
    group_p = cap_probs(group_mass, cap)  # [F, G]
    draws = torch.multinomial(group_p, rollouts, replacement=True, generator=generator).T  # [R, F]
    m_max = int(sizes.max())
    # Members of the drawn group, padded to m_max: rank positions [R, F, m_max].
    slot = torch.arange(m_max)
    member_rank = starts[draws][..., None] + slot  # [R, F, m_max]
    valid = slot < sizes[draws][..., None]
    member_rank = member_rank.clamp(max=n - 1)
    member_p = ranked[torch.arange(num_frames)[None, :, None], member_rank] * valid  # [R, F, m_max]
    m = n // num_groups  # the release clamps with the nominal group size for every group
    member_p = member_p / member_p.sum(-1, keepdim=True).clamp(min=1e-30)
    member_p = torch.where(valid, member_p.clamp(1 / (2 * m), 2 / m), torch.zeros_like(member_p))
    member_p = member_p / member_p.sum(-1, keepdim=True)
    pick = torch.multinomial(member_p.reshape(-1, m_max), k, replacement=False, generator=generator)
    pick_rank = member_rank.reshape(-1, m_max).gather(1, pick).reshape(rollouts, num_frames, k)
    token = order[torch.arange(num_frames)[None, :, None], pick_rank]  # [R, F, k]
    masks.scatter_(2, token, True)
    masks[0] = topk_mask(scores.detach().cpu(), k)
    return masks


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Per-row top-k mask: scores [F, N] -> bool [F, N] with k True per row."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(1, scores.topk(min(k, scores.shape[1]), dim=1).indices, True)


def noisy_topk_masks(
    scores: Tensor, k: int, rollouts: int, generator: torch.Generator | None = None, noise: float = 1.0
) -> Tensor:
    """Ablation: per-frame top-k of scores + noise*Gumbel. scores [F, N] -> masks [R, F, N]; rollout 0 = top-k."""
    s = scores.detach().float().cpu()
    u = torch.rand((rollouts, *s.shape), generator=generator).clamp(1e-9, 1 - 1e-9)
    gumbel = -torch.log(-torch.log(u))
    noisy = s[None] + noise * gumbel
    masks = torch.zeros_like(noisy, dtype=torch.bool).scatter_(2, noisy.topk(min(k, s.shape[1]), dim=2).indices, True)
    if rollouts:
        masks[0] = topk_mask(s, k)
    return masks


def dpc_knn_select(features: Tensor, count: int, knn: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """DPC-kNN density peaks (the release's ``div_sample``): features [N, D] -> the ``count`` chosen indices.

    Distances are Euclidean / sqrt(D); density = exp(-mean squared distance to the knn nearest, self
    included) + 1e-6 noise; delta = distance to the nearest denser token (the maximum if none); keep
    the top ``count`` by density * delta.
    """
    n, dim = features.shape
    count = min(count, n)
    x = features.detach().float().cpu()
    dist = torch.cdist(x, x) / math.sqrt(dim)  # [N, N]
    near = dist.topk(min(knn, n), dim=1, largest=False).values
    density = torch.exp(-(near**2).mean(1)) + 1e-6 * torch.rand(n, generator=generator)
    denser = density[None, :] > density[:, None]  # [i, j]: j denser than i
    delta = torch.where(denser, dist, torch.full_like(dist, float("inf"))).min(1).values
    delta = torch.where(torch.isinf(delta), dist.max(), delta)
    return (density * delta).topk(count).indices


def frame_masks(
    frame_scores: Tensor,
    features: Tensor,
    total: int,
    rollouts: int,
    generator: torch.Generator | None = None,
    frame_ratio: float = 0.125,
    frame_cap: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """Frame-mode rollouts.

    frame_scores [F] (v), features [F, N, D] original token features, ``total`` tokens to keep (k*F,
    the token mode's budget); returns (token masks [R, F, N] with ``total`` True each, frame actions
    [R, F] bool: the chosen frames). Rollout 0 takes the top frames.
    """
    num_frames, n, _ = features.shape
    total = min(total, num_frames * n)
    chosen = max(1, math.ceil(num_frames * frame_ratio))
    chosen = max(chosen, math.ceil(total / n))  # enough frames to hold the budget
    chosen = min(chosen, num_frames)
    p = cap_probs(torch.softmax(frame_scores.detach().float().cpu(), dim=0)[None], frame_cap / num_frames)[0]
    picks = torch.stack([torch.multinomial(p, chosen, replacement=False, generator=generator) for _ in range(rollouts)])
    if rollouts:
        picks[0] = frame_scores.detach().cpu().topk(chosen).indices
    actions = torch.zeros(rollouts, num_frames, dtype=torch.bool).scatter_(1, picks, True)
    cache: dict[tuple[int, ...], Tensor] = {}
    masks = torch.zeros(rollouts, num_frames, n, dtype=torch.bool)
    flat = features.reshape(num_frames * n, -1)
    for r in range(rollouts):
        frames = tuple(picks[r].sort().values.tolist())
        if frames not in cache:  # one joint selection over every token of the chosen frames
            pool = (torch.tensor(frames)[:, None] * n + torch.arange(n)).reshape(-1)
            cache[frames] = pool[dpc_knn_select(flat[pool], total, generator=generator)]
        masks[r].view(-1)[cache[frames]] = True
    return masks, actions
