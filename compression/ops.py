"""Vectorised building blocks shared by the methods: index plans, group ranks, exact allocations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from compression.tokens import TokenSet


def evenly_spaced(n: int, k: int, device: torch.device | str = "cpu") -> Tensor:
    """k distinct indices spread evenly over range(n) (all of them when k >= n): [min(k, n)] int64."""
    k = max(0, min(k, n))
    return (torch.arange(k, dtype=torch.int64, device=device) * n) // max(k, 1)


def check_ratio(method: str, ratio: float, *, allow_zero: bool = True, key: str = "ratio") -> None:
    """ValueError unless ``ratio`` lies in [0, 1] ((0, 1] when zero is not allowed)."""
    if not (0.0 <= ratio <= 1.0) or (ratio == 0.0 and not allow_zero):
        raise ValueError(f"{method} {key} must lie in {'[' if allow_zero else '('}0, 1], got {ratio}")


def trivial_selection(tokens: TokenSet, budget: int) -> TokenSet | None:
    """What a stage-2 selection returns without looking at the tokens: all of them when the budget
    covers them, none when the budget is zero or less; None when there is a real choice to make."""
    if budget >= len(tokens):
        return tokens
    if budget <= 0:
        return tokens.gather(tokens.frame[:0])  # an empty int64 index on the tokens' device
    return None


def keep_sorted(tokens: TokenSet, idx: Tensor) -> TokenSet:
    """Gather ``idx`` in ascending order, so time order is preserved."""
    return tokens.gather(torch.sort(idx.to(torch.int64)).values)


def keep_mask(tokens: TokenSet, mask: Tensor) -> TokenSet:
    return tokens.gather(torch.nonzero(mask, as_tuple=True)[0])


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores (ties broken by lower index), ascending: [min(k, K)]."""
    k = max(0, min(k, scores.numel()))
    order = stable_argsort(-scores.to(torch.float64))
    return torch.sort(order[:k]).values


def stable_argsort(keys: Tensor) -> Tensor:
    return torch.sort(keys, stable=True).indices


def group_rank(groups: Tensor, scores: Tensor) -> Tensor:
    """Rank of each element inside its group by descending score (0 = best): [K] int64.

    groups: [K] int64 group ids; scores: [K]. Ties keep the original order.
    """
    if groups.numel() == 0:
        return groups.clone()
    by_score = stable_argsort(-scores.to(torch.float64))
    order = by_score[stable_argsort(groups[by_score])]
    sorted_groups = groups[order]
    first = torch.ones_like(sorted_groups, dtype=torch.bool)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    slots = torch.arange(len(order), device=order.device)
    start = torch.cummax(torch.where(first, slots, 0), 0).values
    rank = torch.empty_like(order)
    rank[order] = slots - start
    return rank


def dense_ids(values: Tensor) -> Tensor:
    """Map values to 0..G-1 in ascending value order: [K] int64."""
    return torch.unique(values, return_inverse=True)[1]


def allocate(weights: Tensor, total: int, caps: Tensor) -> Tensor:
    """Split ``total`` into integers proportional to ``weights`` with 0 <= q <= caps, sum exact.

    weights, caps: [G]. Overflow above a cap is redistributed (water-filling over groups, at most G
    rounds); rounding uses largest remainders. Returns [G] int64 summing to min(total, caps.sum()).
    """
    caps = caps.to(torch.int64)
    total = int(min(total, int(caps.sum())))
    quota = torch.zeros_like(caps, dtype=torch.float64)
    free = caps > 0
    left = float(total)
    for _ in range(len(caps)):  # rounds over groups, not tokens
        w = torch.where(free, weights.to(torch.float64).clamp_min(0) + 1e-12, 0.0)
        share = quota + left * w / w.sum()
        over = free & (share >= caps)
        if not bool(over.any()):
            quota = share
            break
        quota = torch.where(over, caps.to(torch.float64), quota)
        free &= ~over
        left = total - float(quota.sum())
        if not bool(free.any()) or left <= 0:
            break
    return _round_exact(quota.clamp_max(caps.to(torch.float64)), total, caps)


def _round_exact(quota: Tensor, total: int, caps: Tensor) -> Tensor:
    base = torch.floor(quota).to(torch.int64).clamp_max(caps)
    short = total - int(base.sum())
    if short > 0:
        room = base < caps
        remainder = torch.where(room, quota - base, -1.0)
        base[stable_argsort(-remainder)[:short]] += 1
    return base


def frame_means(tokens: TokenSet) -> tuple[Tensor, Tensor]:
    """Per-frame mean features: (frame ids [F'], means [F', D] float32), size-weighted."""
    ids, inverse = torch.unique(tokens.frame, return_inverse=True)
    w = tokens.size.to(torch.float32)
    sums = w.new_zeros(len(ids), tokens.dim).index_add_(0, inverse, tokens.features.float() * w[:, None])
    counts = w.new_zeros(len(ids)).index_add_(0, inverse, w)
    return ids, sums / counts.clamp_min(1e-12)[:, None]


def cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of a, b: [M, D] -> [M]."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def segments_from_similarity(sim: Tensor, tau: float) -> Tensor:
    """Segment id per frame given cos(frame t-1, frame t) for t = 1..F-1: sim [F-1] -> [F] int64."""
    cut = torch.cat([torch.zeros(1, dtype=torch.int64, device=sim.device), (sim < tau).to(torch.int64)])
    return torch.cumsum(cut, 0)


def require_model(model: object, method: str, need: str) -> object:
    """The model hooks, or a ValueError naming what the method needs."""
    if model is None:
        raise ValueError(f"stage-2 method {method!r} needs model hooks ({need}): pass "
                         f"SelectContext(model=...) with a vlm adapter")
    return model


def as_scores(values: object, k: int, what: str, device: torch.device | str = "cpu") -> Tensor:
    """Hook output as a float64 vector [k] on ``device`` (the tokens'), NaN read as -inf."""
    t = torch.as_tensor(values, device=device).detach().to(device, torch.float64).reshape(-1)
    if t.numel() != k:
        raise ValueError(f"{what} returned {t.numel()} scores for {k} tokens")
    return torch.nan_to_num(t, nan=float("-inf"))
