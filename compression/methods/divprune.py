"""``divprune``: keep a maximally diverse subset (max-min diversity), query-agnostic (stage 2).

Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",
arXiv 2503.02175, CVPR 2025, section 3 (Eq. 4-6): select the subset maximising the minimum pairwise
cosine distance, solved greedily: repeatedly add the token whose distance to the selected set is
largest. The first pick is the token farthest from the set's mean [ASSUMPTION: the paper's seed
choice is not reproduced here]. The greedy loop runs ``budget`` steps, each vectorised over all K
tokens; up to ``gram_max_tokens`` tokens the K x K similarities are computed once (one matmul, then
O(K) per step), above it each step computes one row (O(budget * K * D) in all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compression.ops import trivial_selection
from compression.registry import SelectContext, register_method
from compression.tokens import TokenSet


@register_method("divprune", stage=2)
class DivPrune:
    @dataclass(frozen=True)
    class Params:
        gram_max_tokens: int = 8192  # precompute the K x K similarities up to this K (256 MB at 8192)

    def __init__(self, params: Params) -> None:
        self.params = params

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        if (trivial := trivial_selection(tokens, budget)) is not None:
            return trivial
        x = F.normalize(tokens.features.float(), dim=-1)  # [K, D]
        gram = x @ x.T if len(tokens) <= self.params.gram_max_tokens else None  # [K, K] cosine, when it fits
        centre = F.normalize(x.mean(0), dim=0)
        chosen = torch.empty(budget, dtype=torch.int64, device=x.device)
        chosen[0] = int(torch.argmin(x @ centre))
        dist = 1.0 - self._similarity(x, gram, int(chosen[0]))  # [K] cosine distance to the selected set
        dist[chosen[0]] = -1.0
        for step in range(1, budget):  # picks, each vectorised over the K tokens
            pick = int(torch.argmax(dist))
            chosen[step] = pick
            dist = torch.minimum(dist, 1.0 - self._similarity(x, gram, pick))  # chosen tokens stay at -1
            dist[pick] = -1.0
        return tokens.gather(torch.sort(chosen).values)

    @staticmethod
    def _similarity(x: torch.Tensor, gram: torch.Tensor | None, i: int) -> torch.Tensor:
        """Cosine similarity of token i to all: [K] (a row of the precomputed Gram matrix when there is one)."""
        return gram[i] if gram is not None else x @ x[i]
