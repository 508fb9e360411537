"""``dtd``: differential token drop for streams (stage 1).

Yao et al., "TimeChat-Online: 80% Visual Tokens are Naturally Redundant in Streaming Videos",
arXiv 2504.17343 (ACM MM 2025), section 3 "Differential Token Drop": a token is dropped when it is
unchanged since the last kept frame at the same spatial position. vidmem measures "unchanged" as
cosine similarity >= ``threshold`` between encoder features (the paper also describes a pixel-level
variant). ``reference=kept`` compares with the last *kept* token at that position (the issue's
definition); ``reference=previous`` with the previous frame's token. The reference tokens [N, D] are
the stage-1 state, so chunk-by-chunk equals whole-video. The first frame of a stream is kept whole.
Frames are visited in order (a loop over the F frames of a chunk, vectorised over the N positions),
because each frame's decision depends on the previous one's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from compression.registry import register_method
from compression.tokens import TokenBlock, TokenSet


@register_method("dtd", stage=1)
class DifferentialTokenDrop:
    adaptive = True  # the number of kept tokens depends on the content

    @dataclass(frozen=True)
    class Params:
        threshold: float = 0.9  # cosine similarity at or above which a token counts as unchanged
        reference: Literal["kept", "previous"] = "kept"

    def __init__(self, params: Params) -> None:
        self.params = params

    def init_state(self) -> dict:
        return {"ref": None}

    def update(self, state: dict, block: TokenBlock) -> tuple[dict, TokenSet]:
        tokens = block.to_tokenset()
        f, n, _ = block.features.shape
        feats = F.normalize(block.features.float(), dim=-1)  # [F, N, D]
        ref = state.get("ref")
        ref = None if ref is None else ref.to(feats.device)  # a state loaded from the memory store is on the CPU
        keep = torch.ones(f, n, dtype=torch.bool, device=feats.device)
        for i in range(f):  # frames, not tokens: each decision depends on the previous frame's
            if ref is not None and ref.shape[0] == n:
                keep[i] = (feats[i] * ref).sum(-1) < self.params.threshold
                ref = torch.where(keep[i, :, None], feats[i], ref) if self.params.reference == "kept" else feats[i]
            else:
                ref = feats[i]
        new_state = {"ref": None if ref is None else ref.clone()}
        return new_state, tokens.gather(torch.nonzero(keep.reshape(-1), as_tuple=True)[0])
