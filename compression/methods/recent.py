"""``recent``: the streaming baseline, a last-N window: keep the ``budget`` most recent tokens (stage 2).

Not from a paper: the sliding-window reference every streaming comparison carries.
Tokens are time-ordered, so the window is the set's tail; ties inside the oldest kept frame resolve
to its later positions, which keeps the budget exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compression.registry import SelectContext, register_method
from compression.tokens import TokenSet


@register_method("recent", stage=2)
class Recent:
    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Params) -> None:
        self.params = params

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        k = len(tokens)
        return tokens.gather(torch.arange(max(0, k - max(budget, 0)), k, device=tokens.frame.device))
