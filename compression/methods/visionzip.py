"""``visionzip``: dominant tokens by attention received, plus contextual merges of the rest (stage 2).

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
arXiv 2412.04467, CVPR 2025, section 4.1: keep the *dominant* tokens that receive the most
attention, then build *contextual* tokens: split the remaining tokens into evenly spaced targets and
the rest, merge each of the rest into its most similar target (dot product of normalised features),
size-weighted. The paper's default 54 dominant + 10 contextual (of 64) gives ``contextual_ratio``
= 10/64 ~ 0.16. Adaptation: the paper reads the vision encoder's [CLS] attention; vidmem reads
``ModelHooks.probe_attention`` at LLM layer ``layer`` (as FastVID's "VisionZip*" applies it after
pooling), so the selection sees the question. Output: exactly ``budget`` tokens in time order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compression.ops import as_scores, check_ratio, evenly_spaced, require_model, top_k, trivial_selection
from compression.registry import SelectContext, register_method
from compression.tokens import TokenSet


@register_method("visionzip", stage=2)
class VisionZip:
    @dataclass(frozen=True)
    class Params:
        contextual_ratio: float = 10 / 64  # share of the budget given to contextual tokens
        layer: int = 2

    def __init__(self, params: Params) -> None:
        check_ratio("visionzip", params.contextual_ratio, key="contextual_ratio")
        self.params = params

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        if (trivial := trivial_selection(tokens, budget)) is not None:
            return trivial
        model = require_model(context.model, "visionzip", "probe_attention")
        attn = as_scores(model.probe_attention(context.question, tokens, self.params.layer), len(tokens),
                         "probe_attention", tokens.features.device)
        n_ctx = min(budget, math.floor(self.params.contextual_ratio * budget + 0.5))
        dominant = top_k(attn, budget - n_ctx)
        rest = torch.ones(len(tokens), dtype=torch.bool, device=attn.device)
        rest[dominant] = False
        rest_idx = torch.nonzero(rest, as_tuple=True)[0]  # [K - dominant], time order
        ctx_idx = rest_idx[evenly_spaced(rest_idx.numel(), n_ctx, rest_idx.device)]  # contextual targets
        if ctx_idx.numel() == 0:
            return tokens.gather(dominant)
        x = F.normalize(tokens.features.float(), dim=-1)
        partner = (x[rest_idx] @ x[ctx_idx].T).argmax(dim=-1)  # [K - dominant] most similar target
        target = torch.arange(len(tokens), device=rest_idx.device)
        target[rest_idx] = ctx_idx[partner]
        target[ctx_idx] = ctx_idx
        return tokens.merge(target)  # dominant + contextual tokens, the rest merged into the latter
