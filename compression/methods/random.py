"""``random``: a seeded random subset, the lower bound every table carries (stages 1 and 2).

Stage 1 keeps round(ratio * F * N) tokens of each chunk, drawn with a generator seeded from
(seed, frame_offset) so a stream replays identically. Stage 2 keeps ``budget`` tokens drawn with a
generator seeded from (seed, context.seed). Kept tokens stay in time order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from compression.ops import check_ratio, keep_sorted
from compression.registry import SelectContext, register_method
from compression.tokens import TokenBlock, TokenSet


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _permutation(n: int, tokens: TokenSet, *seeds: int) -> Tensor:
    """A seeded permutation of range(n) on the tokens' device. Drawn on the CPU, so a seed selects the
    same tokens on every device (CPU-GPU copy of n indices)."""
    return torch.randperm(n, generator=_generator(*seeds), device="cpu").to(tokens.features.device)


@register_method("random", stage=(1, 2))
class RandomSubset:
    @dataclass(frozen=True)
    class Params:
        ratio: float = 0.5  # stage 1: fraction of each chunk's tokens kept
        seed: int = 0

    def __init__(self, params: Params) -> None:
        check_ratio("random", params.ratio)
        self.params = params

    def init_state(self) -> dict:
        return {}

    def update(self, state: dict, block: TokenBlock) -> tuple[dict, TokenSet]:
        tokens = block.to_tokenset()
        k = math.floor(self.params.ratio * len(tokens) + 0.5)
        return state, keep_sorted(tokens, _permutation(len(tokens), tokens, self.params.seed, block.frame_offset)[:k])

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        return keep_sorted(tokens, _permutation(len(tokens), tokens, self.params.seed, context.seed)[: max(budget, 0)])
