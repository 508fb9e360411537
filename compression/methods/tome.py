"""``tome``: bipartite soft matching over a chunk's tokens, in space and across frames (stage 1).

Bolya et al., "Token Merging: Your ViT but Faster", arXiv 2210.09461, ICLR 2023, section 3
("Token Merging", bipartite soft matching, steps 1-5) and the size-weighted average with
proportional sizes (section 3, "Tracking Token Size"). As in the paper, one round partitions the
tokens alternately into A (even index) and B (odd index), draws one edge from every A token to its
most similar B token (cosine similarity), keeps the r most similar edges and merges those A tokens
into their B partners, size-weighted; at most half the tokens go per round, so lower ratios run
several rounds. Deviations, on purpose: the metric is the token features (no attention keys exist
after the encoder); the output keeps time order instead of ToMe's [unmerged A, B] order; with
``mode=spacetime`` the chunk's F*N tokens form one sequence, so an A token may merge into a B token
of another frame (merging across frames), with ``mode=spatial`` each frame is matched on its own;
``matmul=bf16`` computes the similarities in bf16 (faster on CPUs with bf16 units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from compression.ops import check_ratio
from compression.registry import register_method
from compression.tokens import TokenBlock, TokenSet


def bipartite_targets(metric: Tensor, r: int, matmul_dtype: torch.dtype = torch.float32) -> Tensor:
    """One round of bipartite soft matching: metric [B, T, D] -> merge target per token [B, T].

    target[b, i] == i for tokens that stay; for the r merged A tokens it is their B partner's index.
    ``matmul_dtype=torch.bfloat16`` computes the similarities in bf16 (several times faster on CPUs
    with bf16 units; near-ties may then resolve differently).
    """
    b, t, _ = metric.shape
    target = torch.arange(t, device=metric.device).expand(b, t).clone()
    r = min(r, t // 2)
    if r <= 0:
        return target
    x = F.normalize(metric.float(), dim=-1).to(matmul_dtype)
    a_idx, b_idx = torch.arange(0, t, 2, device=metric.device), torch.arange(1, t, 2, device=metric.device)
    scores = (x[:, a_idx] @ x[:, b_idx].transpose(1, 2)).float()  # [B, |A|, |B|] cosine
    best, partner = scores.max(dim=-1)  # [B, |A|]
    sources = torch.sort(best, dim=-1, descending=True, stable=True).indices[:, :r]  # [B, r] A slots
    target.scatter_(1, a_idx[sources], b_idx[partner.gather(1, sources)])
    return target


def tome_round(tokens: TokenSet, r: int) -> TokenSet:
    """One bipartite-soft-matching round over the whole set (A = even, B = odd): K -> K - min(r, K//2)."""
    return tokens.merge(bipartite_targets(tokens.features[None], r)[0])


def tome_to(tokens: TokenSet, keep: int, frames: int = 1, matmul_dtype: torch.dtype = torch.float32) -> TokenSet:
    """Repeat rounds until ``keep`` tokens remain; frames > 1 matches each of ``frames`` equal frames alone."""
    while len(tokens) > keep:
        per = len(tokens) // frames
        r = min(per // 2, math.ceil((len(tokens) - keep) / frames))
        if r <= 0:
            break
        local = bipartite_targets(tokens.features.reshape(frames, per, -1), r, matmul_dtype)  # [frames, per]
        tokens = tokens.merge((local + torch.arange(frames, device=local.device)[:, None] * per).reshape(-1))
    return tokens


@register_method("tome", stage=1)
class ToMe:
    @dataclass(frozen=True)
    class Params:
        ratio: float = 0.5  # fraction of each chunk's tokens kept
        mode: Literal["spacetime", "spatial"] = "spacetime"
        matmul: Literal["fp32", "bf16"] = "fp32"  # dtype of the similarity matmul

    def __init__(self, params: Params) -> None:
        check_ratio("tome", params.ratio, allow_zero=False)
        self.params = params

    def init_state(self) -> dict:
        return {}

    def update(self, state: dict, block: TokenBlock) -> tuple[dict, TokenSet]:
        tokens = block.to_tokenset()
        f, n = block.features.shape[:2]
        if self.params.mode == "spatial":
            keep_per_frame = max(1, math.floor(self.params.ratio * n + 0.5))
            return state, tome_to(tokens, keep_per_frame * f, max(f, 1), self.dtype)
        return state, tome_to(tokens, max(1, math.floor(self.params.ratio * f * n + 0.5)), 1, self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.params.matmul == "bf16" else torch.float32
