"""``cacovid``: CaCoVID's inference-time budget rule over a learned policy's scores (stage 2).

Ma et al., "Contribution-aware Token Compression for Efficient Video Understanding via Reinforcement
Learning", arXiv 2602.01649, AAAI 2026. The paper's equations could not be read; the rule is the
released code's inference path (LivingFutureLab/CaCoVID, ``CompressionPolicy.sample_token_eval``,
``token_select_strategy = "token"``), with R = budget / K:

1. frame shares: v <- 3 v / max|v|; pi = softmax(v) clipped to [0.5/F', 1.5/F'] (``clip_low``,
   ``clip_high``; the release's 1/(2t) and max_sample_ratio/(t R) with max_sample_ratio = 1.5 R) and
   renormalised;
2. importance budget B_imp = ``imp_ratio`` * budget; quotas q_f = round(pi_f * round(B_imp)) clipped
   to [1, floor(imp_ratio * n_f * clip_high * R)] (torch.clamp: a cap below 1 wins, so a quota can
   be 0), then repaired to sum to floor(B_imp) one token at a time: while the sum is too large the
   largest quota loses one (the first of equals), while it is too small the smallest gains one (the
   first of equals), with no other bound (the release's rule);
3. each frame keeps its q_f tokens with the highest token score u;
4. coverage fill: the remaining budget goes to still-unselected tokens at evenly spaced positions of
   their time-ordered list (linspace, rounded).

Deviations, on purpose: the per-frame cap uses the frame's own token count n_f (stage-1 output is
ragged; with equal frames it is the release's h*w); R = budget / K because stage 2 is given a
token budget, not a rate (with the release's budget floor(R K) the rounded importance budget can
differ from the release's by one token). ``quotas=shares`` is a named option, not the default, for
grids so small that the release's cap is 0 (vidmem-tiny: 9 tokens a frame at 5-10 %): there the
release's repair hands the importance tokens to the first frames in time order whatever the
policy's frame scores; ``shares`` caps at least 1, floors at 0 when the importance budget is smaller
than the number of frames, and repairs by largest remainder against the ideal shares, so the frames
the policy prefers get the tokens.

Scores come from a :class:`compression.scoring.TokenScorer`: ``scorer=`` at build time, or
``policy_path=`` loaded through ``compression.cacovid.load_scorer``. Without either, building fails.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
        quotas: Literal["release", "shares"] = "release"  # shares: the small-grid adaptation (docstring)

    def __init__(self, params: Params, scorer: TokenScorer | None = None) -> None:
        if scorer is None and not params.policy_path:
            raise ValueError("cacovid needs a trained policy: pass policy_path=<file> in the spec "
                             "(train one with `vidmem train cacovid`) or scorer=<TokenScorer>")
        self.params = params
        self.scorer = scorer if scorer is not None else load_scorer(params.policy_path)

    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet:
        if (trivial := trivial_selection(tokens, budget)) is not None:
            return trivial
        frame_ids, f_inv = torch.unique(tokens.frame, return_inverse=True)
        u, v = self.scorer.score(context.question, tokens, context.model)
        k = len(tokens)
        device = tokens.features.device
        u, v = as_scores(u, k, "token scores", device), as_scores(v, len(frame_ids), "frame scores", device)
        quotas = self.frame_quotas(v, torch.bincount(f_inv, minlength=len(frame_ids)), budget, k)
        return tokens.gather(torch.nonzero(budget_mask(f_inv, u, quotas, budget), as_tuple=True)[0])

    def frame_quotas(self, v: Tensor, counts: Tensor, budget: int, k: int) -> Tensor:
        """Per-frame quotas q_f [F'] int64 (steps 1-2): v [F'] frame scores, counts [F'] tokens per frame."""
        p = self.params
        share = frame_shares(v, p.clip_low, p.clip_high)
        b_imp = p.imp_ratio * budget
        caps = torch.floor(p.imp_ratio * counts.to(torch.float64) * (p.clip_high * budget / k)).to(torch.int64)
        if p.quotas == "shares":
            return _share_quotas(share, b_imp, caps, counts)
        q = torch.round(share * round(b_imp)).to(torch.int64)
        return release_repair(torch.minimum(q.clamp_min(1), caps), math.floor(b_imp))


def frame_shares(v: Tensor, clip_low: float, clip_high: float) -> Tensor:
    """Step 1: v [F'] -> shares [F'] summing to 1, each within [clip_low/F', clip_high/F'] before renormalising."""
    f = v.numel()
    v = v.to(torch.float32)  # the release computes the shares in float32
    v = v / v.abs().max().clamp_min(1e-12) * 3
    share = torch.softmax(v, 0).clamp(clip_low / f, clip_high / f)
    return share / share.sum()


def release_repair(q: Tensor, total: int) -> Tensor:
    """The release's repair: take one from the largest quota (first of equals) while the sum exceeds
    ``total``, give one to the smallest (first of equals) while it falls short. q [F'] int64, in place."""
    diff = total - int(q.sum())
    step = 1 if diff > 0 else -1
    for _ in range(abs(diff)):  # bounded by |diff|: each round moves the sum by one
        i = int(torch.argmin(q)) if step > 0 else int(torch.argmax(q))
        q[i] += step
    return q


def budget_mask(frame: Tensor, u: Tensor, quotas: Tensor, budget: int) -> Tensor:
    """Steps 3-4: the top-q_f tokens of each frame by u, then the rest of the budget evenly spaced over
    the unselected tokens in time order. frame [K] dense frame index, u [K], quotas [F'] -> bool [K]."""
    chosen = group_rank(frame, u) < quotas[frame]
    rest = torch.nonzero(~chosen, as_tuple=True)[0]
    n_fill = budget - int(chosen.sum())
    if n_fill > 0:
        pick = torch.linspace(0, rest.numel() - 1, n_fill, device=rest.device).round().to(torch.int64)
        chosen[rest[pick]] = True
    return chosen


def _share_quotas(share: Tensor, b_imp: float, caps: Tensor, counts: Tensor) -> Tensor:
    """``quotas=shares``: caps at least 1 (at most the frame's tokens), floor 1 unless the importance
    budget is below the number of frames, then a largest-remainder repair towards the ideal shares."""
    total = math.floor(b_imp)
    caps = torch.minimum(counts, caps).clamp_min(1)
    low = 1 if total >= share.numel() else 0
    ideal = share.to(torch.float64) * round(b_imp)
    q = torch.round(ideal).to(torch.int64).clamp(low, None).minimum(caps)
    total = min(total, int(caps.sum()))
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
