"""``adatp``: AdaTP's query-aware half: debiased segment budgets, attention ranking inside segments (stage 2).

Sun, Shen et al., "AdaTP: Attention-Debiased Token Pruning for Video Large Language Models",
arXiv 2505.20100, Findings of EMNLP 2025. The paper body could not be read; this implements the
reconstruction of research/seed-methods.md section 2.4. What is [RECONSTRUCTED] is a parameter:

1. segments (step 2): side["segment"] from stage-1 ``adatp-local`` when present, otherwise frames
   t-1, t share a segment when the cosine of their mean features is >= ``tau`` (0.95 [UNVERIFIED]);
2. global debiasing (step 3, formula [RECONSTRUCTED]): segment relevance r_s = max (``relevance``)
   over its frames of the frame's mean ``ModelHooks.text_relevance``; segment budget
   B_s = B * ((1 - lam) * n_s / K + lam * softmax(r / tau_r)_s), n_s the segment's token count (the
   length-proportional floor), capped at n_s with overflow redistributed and rounded so that the
   B_s sum to exactly B (lam = 0.5, tau_r = 0.05 [ASSUMPTION]);
3. local debiasing (step 4 [UNVERIFIED]): inside a segment, one candidate per spatial position, the
   best-attended; second-best per position are admitted round-robin only when B_s exceeds the
   number of positions;
4. ranking (step 5): candidates ranked by ``probe_attention`` at LLM layer ``layer`` (K = 2
   [ASSUMPTION]), compared only inside their segment, which removes the end-of-sequence advantage.

The whole plan is vectorised: stable sorts give every token its rank inside its (segment, position)
group and then inside its segment; a token is kept when that rank is below its segment's budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from compression.ops import (
    allocate,
    as_scores,
    cosine_rows,
    dense_ids,
    frame_means,
    group_rank,
    require_model,
    segments_from_similarity,
    stable_argsort,
    trivial_selection,
)
from compression.registry import SelectContext, register_method
from compression.tokens import TokenSet


@register_method("adatp", stage=2)
class AdaTP:
    @dataclass(frozen=True)
    class Params:
        tau: float = 0.95  # segmentation threshold when tokens carry no side["segment"]
        lam: float = 0.5  # weight of text relevance against the length floor
        tau_r: float = 0.05  # softmax temperature over segment relevance
        layer: int = 2  # LLM layer of the attention probe
        relevance: Literal["max", "mean"] = "max"
        segments: Literal["auto", "frames"] = "auto"  # auto: side["segment"] when present

    def __init__(self, params: Params) -> None:
        if not 0.0 <= params.lam <= 1.0 or params.tau_r <= 0:
            raise ValueError(f"adatp needs 0 <= lam <= 1 and tau_r > 0, got {params}")
        self.params = params

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        if (trivial := trivial_selection(tokens, budget)) is not None:
            return trivial
        model = require_model(context.model, "adatp", "probe_attention and text_relevance")
        k = len(tokens)
        device = tokens.features.device
        attn = as_scores(model.probe_attention(context.question, tokens, self.params.layer), k, "probe_attention",
                         device)
        rel = as_scores(model.text_relevance(context.question, tokens), k, "text_relevance", device)
        seg = self.segments(tokens)
        quotas = self.segment_budgets(seg, tokens.frame, rel, budget)
        rank = rank_in_segment(seg, tokens.position, attn)
        return tokens.gather(torch.nonzero(rank < quotas[seg], as_tuple=True)[0])

    def segments(self, tokens: TokenSet) -> Tensor:
        """Dense segment id per token: [K] int64, non-decreasing in time."""
        if self.params.segments == "auto" and "segment" in tokens.side:
            return dense_ids(tokens.side["segment"])
        frame_ids, means = frame_means(tokens)
        sim = cosine_rows(means[:-1], means[1:])
        return segments_from_similarity(sim, self.params.tau)[torch.searchsorted(frame_ids, tokens.frame)]

    def segment_budgets(self, seg: Tensor, frame: Tensor, rel: Tensor, budget: int) -> Tensor:
        """B_s per segment: [S] int64 summing to ``budget`` (step 3)."""
        n_seg = int(seg.max()) + 1
        frame_ids, f_inv = torch.unique(frame, return_inverse=True)
        f_rel = rel.new_zeros(len(frame_ids)).index_add_(0, f_inv, rel.clamp(-1e9, 1e9))
        f_rel /= torch.bincount(f_inv, minlength=len(frame_ids)).clamp_min(1)
        f_seg = seg.new_zeros(len(frame_ids)).scatter_(0, f_inv, seg)
        reduce = "amax" if self.params.relevance == "max" else "mean"
        seg_rel = rel.new_zeros(n_seg).scatter_reduce(0, f_seg, f_rel, reduce, include_self=False)
        counts = torch.bincount(seg, minlength=n_seg)
        weights = (1 - self.params.lam) * counts / counts.sum() + self.params.lam * torch.softmax(
            seg_rel / self.params.tau_r, 0)
        return allocate(weights, budget, counts)


def rank_in_segment(seg: Tensor, position: Tensor, attn: Tensor) -> Tensor:
    """Rank of each token inside its segment (0 = first kept), ordered by (rank inside its
    (segment, position) group, then attention descending): seg, position, attn [K] -> [K] int64."""
    k = seg.numel()
    dup_rank = group_rank(seg * (int(position.max()) + 1) + position, attn)  # 0 = position's best token
    attn_rank = torch.empty_like(seg)
    attn_rank[stable_argsort(-attn)] = torch.arange(k, device=seg.device)
    return group_rank(seg, -(dup_rank * k + attn_rank).to(torch.float64))
