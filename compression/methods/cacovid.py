"""``cacovid``: CaCoVID's inference-time budget rule over a learned policy's scores (stage 2).

Ma et al., "Contribution-aware Token Compression for Efficient Video Understanding via Reinforcement
Learning", arXiv 2602.01649, AAAI 2026. The paper's equations could not be read; this follows the
released code's inference path (research/seed-methods.md section 1.6, ``token_select_strategy =
"token"``), with R = budget / K:

1. frame shares: v <- 3 v / max|v|; pi = softmax(v) clipped to [0.5/F', 1.5/F'] (``clip_low``,
   ``clip_high``) and renormalised;
2. importance budget B_imp = ``imp_ratio`` * budget; quotas q_f = round(pi_f * round(B_imp)) clipped
   to [1, floor(imp_ratio * n_f * clip_high * R)], then repaired to sum to floor(B_imp) (decrement
   the largest / increment the smallest quota, one step per frame at most per round);
3. each frame keeps its q_f tokens with the highest token score u;
4. coverage fill: the remaining budget goes to still-unselected tokens at evenly spaced positions of
   their time-ordered list (linspace, rounded).

Adaptations: frames may hold different token counts (stage-1 output is ragged), so the per-frame
cap uses the frame's own count n_f. Scores come from a :class:`compression.scoring.TokenScorer`:
``scorer=`` at build time, or ``policy_path=`` loaded through ``compression.cacovid.load_scorer``
(the learned-methods package). Without either, building fails with a clear error.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from compression.ops import as_scores, group_rank, trivial_selection
from compression.registry import SelectContext, register_method
from compression.scoring import TokenScorer
from compression.tokens import TokenSet


def load_scorer(path: str | Path) -> TokenScorer:
    """The trained CaCoVID policy at ``path`` as a TokenScorer (via compression.cacovid.load_scorer)."""
    if not Path(path).exists():
        raise ValueError(f"cacovid policy file {path} does not exist; train one with `vidmem train cacovid`")
    module = importlib.import_module("compression.cacovid")
    loader = getattr(module, "load_scorer", None)
    if loader is None:
        raise ValueError("cacovid: compression.cacovid offers no load_scorer(path) -> TokenScorer yet; "
                         "pass scorer=<TokenScorer> to build_method instead")
    return loader(path)


@register_method("cacovid", stage=2)
class CaCoVID:
    @dataclass(frozen=True)
    class Params:
        policy_path: str = ""
        imp_ratio: float = 0.5  # share of the budget given to the policy's per-frame quotas
        clip_low: float = 0.5  # frame share bounds, in multiples of the uniform share 1/F'
        clip_high: float = 1.5

    def __init__(self, params: Params, scorer: TokenScorer | None = None) -> None:
        if scorer is None and not params.policy_path:
            raise ValueError("cacovid needs a trained policy: pass policy_path=<file> in the spec "
                             "(train one with `vidmem train cacovid`) or scorer=<TokenScorer>")
        self.params = params
        self.scorer = scorer if scorer is not None else load_scorer(params.policy_path)

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        k = len(tokens)
        if (trivial := trivial_selection(tokens, budget)) is not None:
            return trivial
        frame_ids, f_inv = torch.unique(tokens.frame, return_inverse=True)
        u, v = self.scorer.score(context.question, tokens, context.model)
        device = tokens.features.device
        u, v = as_scores(u, k, "token scores", device), as_scores(v, len(frame_ids), "frame scores", device)
        quotas = self.frame_quotas(v, torch.bincount(f_inv, minlength=len(frame_ids)), budget, k)
        chosen = group_rank(f_inv, u) < quotas[f_inv]  # [K] top-q_f per frame
        rest = torch.nonzero(~chosen, as_tuple=True)[0]
        n_fill = budget - int(chosen.sum())
        if n_fill > 0:
            chosen[rest[torch.linspace(0, rest.numel() - 1, n_fill, device=rest.device).round().to(torch.int64)]] = True
        return tokens.gather(torch.nonzero(chosen, as_tuple=True)[0])

    def frame_quotas(self, v: Tensor, counts: Tensor, budget: int, k: int) -> Tensor:
        """Per-frame quotas q_f [F'] summing to floor(imp_ratio * budget) (within the caps).

        The released rule caps q_f at floor(imp_ratio * h*w * 1.5R) and floors it at 1. On small grids
        (vidmem-tiny: 9 tokens a frame) that cap is 0 at 10 % and 5 %, which would leave the policy no
        token at all; the cap here is at least 1, and when the importance budget is smaller than the
        number of frames the floor is 0 and the frames with the largest learned shares get the tokens
        (largest-remainder repair, the released rule's decrement-largest / increment-smallest whenever
        the shares cannot tell frames apart)."""
        p, f = self.params, len(counts)
        v = 3.0 * v / v.abs().max().clamp_min(1e-12)
        share = torch.softmax(v, 0).clamp(p.clip_low / f, p.clip_high / f)
        share = share / share.sum()
        b_imp = p.imp_ratio * budget
        total = math.floor(b_imp)
        caps = torch.minimum(counts, torch.floor(p.imp_ratio * counts * p.clip_high * budget / k).to(torch.int64))
        low = 1 if total >= f else 0
        caps = caps.clamp_min(1)  # every frame holds at least one token
        ideal = share * round(b_imp)
        q = torch.round(ideal).to(torch.int64).clamp(low, None).minimum(caps)
        return _repair(q, min(total, int(caps.sum())), low, caps, ideal)


def _repair(q: Tensor, total: int, low: int, caps: Tensor, ideal: Tensor) -> Tensor:
    """Move quotas one token at a time until they sum to ``total``: take from the frame most above its
    ideal share, give to the frame most below it (with equal shares: the largest / the smallest quota)."""
    for _ in range(4 * q.numel() + total):  # bounded: each round moves the sum by one
        diff = total - int(q.sum())
        if diff == 0:
            break
        excess = q - ideal
        if diff < 0:
            q[int(torch.argmax(torch.where(q > low, excess, -math.inf)))] -= 1
        else:
            q[int(torch.argmin(torch.where(q < caps, excess, math.inf)))] += 1
    return q
