"""``uniform``: evenly spaced tokens, the budget-matched baseline every table carries (stages 1 and 2).

Stage 1 keeps round(ratio * N) evenly spaced positions in every frame, at least one when ratio > 0
(a small ratio of a coarse grid must not blank the video: 5 % of 9 tokens rounds to none) (``mode=spatial``), or the
frames whose stream-wide index falls on an evenly spaced grid (``mode=temporal``): both depend only
on the frame's own index, so chunk-by-chunk equals whole-video. Stage 2 keeps ``budget`` evenly
spaced tokens of the time-ordered set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from compression.ops import check_ratio, evenly_spaced
from compression.registry import SelectContext, register_method
from compression.tokens import TokenBlock, TokenSet


@register_method("uniform", stage=(1, 2))
class Uniform:
    @dataclass(frozen=True)
    class Params:
        ratio: float = 0.5  # stage 1: fraction of tokens kept
        mode: Literal["spatial", "temporal"] = "spatial"

    def __init__(self, params: Params) -> None:
        check_ratio("uniform", params.ratio)
        self.params = params

    def init_state(self) -> dict:
        return {}

    def update(self, state: dict, block: TokenBlock) -> tuple[dict, TokenSet]:
        tokens = block.to_tokenset()
        f, n = block.features.shape[:2]
        device = block.features.device
        if self.params.mode == "spatial":
            per_frame = math.floor(self.params.ratio * n + 0.5)
            if self.params.ratio > 0:
                per_frame = max(1, per_frame)
            keep = evenly_spaced(n, min(per_frame, n), device)  # [n'] positions
            idx = (torch.arange(f, device=device)[:, None] * n + keep[None, :]).reshape(-1)
        else:
            frames = torch.arange(f, device=device) + block.frame_offset
            on_grid = torch.floor((frames + 1) * self.params.ratio) > torch.floor(frames * self.params.ratio)
            idx = (torch.nonzero(on_grid, as_tuple=True)[0][:, None] * n + torch.arange(n, device=device)).reshape(-1)
        return state, tokens.gather(idx)

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        return tokens.gather(evenly_spaced(len(tokens), budget, tokens.frame.device))
