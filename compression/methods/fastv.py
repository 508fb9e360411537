"""``fastv``: keep the visual tokens most attended by the last text token at LLM layer K (stage 2).

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for
Large Vision-Language Models", arXiv 2403.06764, ECCV 2024, section 4 (FastV): after layer K (= 2)
rank image tokens by the attention they receive and keep the top ones. vidmem keeps the top
``budget`` by ``ModelHooks.probe_attention(question, tokens, layer)`` (the attention of the last
text token, as the AdaTP and CaCoVID comparisons use it) and feeds the LLM only those tokens,
instead of pruning inside the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from compression.ops import as_scores, require_model, top_k
from compression.registry import SelectContext, register_method
from compression.tokens import TokenSet


@register_method("fastv", stage=2)
class FastV:
    @dataclass(frozen=True)
    class Params:
        layer: int = 2  # K

    def __init__(self, params: Params) -> None:
        self.params = params

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        if budget >= len(tokens):
            return tokens
        model = require_model(context.model, "fastv", "probe_attention")
        attn = as_scores(model.probe_attention(context.question, tokens, self.params.layer), len(tokens),
                         "probe_attention", tokens.features.device)
        return tokens.gather(top_k(attn, budget))
