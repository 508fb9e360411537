"""``adatp``: AdaTP's query-aware half: debiased segment budgets, attention ranking inside segments (stage 2).

Sun, Shen et al., "AdaTP: Attention-Debiased Token Pruning for Video Large Language Models",
arXiv 2505.20100, Findings of EMNLP 2025: its Global Debiasing module (text-guided segment budgets)
and its segment-wise attention pruning. The paper body, hence its section and equation numbers,
could not be read (only the abstract, the Fig. 1 caption and third-party summaries), so the rules
below are a reconstruction; what is [ASSUMPTION] or [UNVERIFIED] is a parameter:

1. segments: side["segment"] from stage-1 ``adatp-local`` when present, otherwise frames t-1, t
   share a segment when the cosine of their mean features is >= ``tau`` (0.95 [UNVERIFIED]);
2. text relevance, from the Video LLM itself: ``ModelHooks.question_states`` runs the prompt (the
   tokens, then the question) up to LLM layer ``rel_layer`` (2 [ASSUMPTION], the pruning layer) and
   returns the hidden states of the question's tokens and of the visual tokens; a token's relevance
   is the cosine of its hidden state and the question's mean hidden state
   (:func:`hidden_relevance`, a pure function over those tensors). The paper scores text-visual
   relevance with a dedicated text encoder; the Video LLM's own states stand in for it, since a
   served vidmem model carries no separate text tower;
3. global debiasing (formula [ASSUMPTION]): segment relevance r_s = max (``relevance``) over its
   frames of the frame's mean token relevance; segment budget
   B_s = B * ((1 - lam) * n_s / K + lam * softmax(r / tau_r)_s), n_s the segment's token count (the
   length-proportional floor), capped at n_s with overflow redistributed and rounded so that the
   B_s sum to exactly B (lam = 0.5, tau_r = 0.05 [ASSUMPTION]);
4. local debiasing at selection time ([UNVERIFIED] "one representative per spatial position per
   segment"): inside a segment, one candidate per spatial position, the best-attended; second-best
   per position are admitted round-robin only when B_s exceeds the number of positions;
5. ranking: candidates ranked by ``probe_attention`` at LLM layer ``layer`` (K = 2 [ASSUMPTION]),
   compared only inside their segment, which removes the end-of-sequence advantage.

``rel_source=embedding`` is a named option, not the default: relevance as the cosine of each
token's features with the question's mean input word embedding (``ModelHooks.text_relevance``), the
former proxy; it needs no extra forward pass but ignores what the LLM makes of the question.

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
        rel_source: Literal["hidden", "embedding"] = "hidden"  # embedding: the former proxy (docstring)
        rel_layer: int = 2  # LLM layer whose hidden states score text relevance [ASSUMPTION]

    def __init__(self, params: Params) -> None:
        if not 0.0 <= params.lam <= 1.0 or params.tau_r <= 0:
            raise ValueError(f"adatp needs 0 <= lam <= 1 and tau_r > 0, got {params}")
        self.params = params

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        if (trivial := trivial_selection(tokens, budget)) is not None:
            return trivial
        need = "probe_attention and " + ("question_states" if self.params.rel_source == "hidden" else "text_relevance")
        model = require_model(context.model, "adatp", need)
        k = len(tokens)
        device = tokens.features.device
        attn = as_scores(model.probe_attention(context.question, tokens, self.params.layer), k, "probe_attention",
                         device)
        rel = as_scores(self.text_relevance(model, context.question, tokens), k, "text relevance", device)
        seg = self.segments(tokens)
        quotas = self.segment_budgets(seg, tokens.frame, rel, budget)
        rank = rank_in_segment(seg, tokens.position, attn)
        return tokens.gather(torch.nonzero(rank < quotas[seg], as_tuple=True)[0])

    def text_relevance(self, model: object, question: str, tokens: TokenSet) -> Tensor:
        """Relevance [K] of each token to the question (step 2, or the ``embedding`` proxy)."""
        if self.params.rel_source == "embedding":
            return model.text_relevance(question, tokens)
        q_states, v_states = model.question_states(question, tokens, self.params.rel_layer)
        return hidden_relevance(q_states, v_states)

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


def hidden_relevance(question_states: Tensor, token_states: Tensor) -> Tensor:
    """Cosine of each visual token's hidden state with the question's mean hidden state.

    question_states [T, H], token_states [K, H] (one LLM layer's output) -> [K] float32 in [-1, 1]."""
    if question_states.numel() == 0 or token_states.shape[0] == 0:
        return torch.zeros(token_states.shape[0], device=token_states.device)
    query = question_states.float().mean(0, keepdim=True).to(token_states.device)
    return cosine_rows(token_states, query.expand_as(token_states))


def rank_in_segment(seg: Tensor, position: Tensor, attn: Tensor) -> Tensor:
    """Rank of each token inside its segment (0 = first kept), ordered by (rank inside its
    (segment, position) group, then attention descending): seg, position, attn [K] -> [K] int64."""
    k = seg.numel()
    dup_rank = group_rank(seg * (int(position.max()) + 1) + position, attn)  # 0 = position's best token
    attn_rank = torch.empty_like(seg)
    attn_rank[stable_argsort(-attn)] = torch.arange(k, device=seg.device)
    return group_rank(seg, -(dup_rank * k + attn_rank).to(torch.float64))
