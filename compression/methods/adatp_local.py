"""``adatp-local``: AdaTP's query-agnostic half: segmentation plus local (spatial) de-duplication (stage 1).

Sun, Shen et al., "AdaTP: Attention-Debiased Token Pruning for Video Large Language Models",
arXiv 2505.20100, Findings of EMNLP 2025: its video segmentation and its Local Debiasing module. The
paper body, hence its section and equation numbers, could not be read (only the abstract, the Fig. 1
caption and third-party summaries), so the rules and thresholds are reconstructed; each is a parameter:

- segmentation: frames t-1 and t share a segment when the cosine similarity of their global
  features is >= ``tau`` (0.95 [UNVERIFIED]); a segment continues across chunk boundaries because the
  previous frame's global feature and the segment id are the state. The global feature v_p is the
  mean of the frame's tokens [ASSUMPTION: the paper takes the visual encoder's global token];
- local debiasing, "intra-segment spatial de-duplication": inside a segment a token is a duplicate,
  and dropped, when its cosine similarity to the segment's last kept token at the same spatial
  position is >= ``dedup_tau`` (0.9 [ASSUMPTION]); otherwise it is kept and becomes that position's
  reference. A segment's first frame is kept whole. So a position that changes inside a segment
  (motion, a new object) keeps its new tokens while a static background is stored once;
- ``max_segment_frames`` (0 = off) forces a new segment after that many frames [ASSUMPTION], so a
  long static scene is still refreshed.

``dedup=first`` is a named option, not the default: strictly one representative per position per
segment (the first occurrence), so every later frame of a segment vanishes whatever it shows; it was
the former rule and is kept for comparison.

Each kept token carries side["segment"] (stream-wide segment id), which stage-2 ``adatp`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from compression.registry import register_method
from compression.tokens import TokenBlock, TokenSet


@register_method("adatp-local", stage=1)
class AdaTPLocal:
    adaptive = True

    @dataclass(frozen=True)
    class Params:
        tau: float = 0.95  # segmentation threshold on adjacent-frame cosine similarity [UNVERIFIED]
        dedup_tau: float = 0.9  # a token this similar to its position's reference is a duplicate [ASSUMPTION]
        max_segment_frames: int = 0  # 0: segments end only on a similarity drop
        dedup: Literal["similar", "first"] = "similar"  # first: one token per position per segment (docstring)

    def __init__(self, params: Params) -> None:
        self.params = params

    def init_state(self) -> dict:
        return {"prev": None, "rep": None, "segment": -1, "length": 0}

    def update(self, state: dict, block: TokenBlock) -> tuple[dict, TokenSet]:
        tokens = block.to_tokenset()
        f, n, _ = block.features.shape
        feats = F.normalize(block.features.float(), dim=-1)  # [F, N, D]
        glob = F.normalize(block.features.float().mean(1), dim=-1)  # [F, D] frame global features
        prev, rep = _on(state["prev"], feats), _on(state["rep"], feats)
        segment, length = state["segment"], state["length"]
        keep = torch.zeros(f, n, dtype=torch.bool, device=feats.device)
        seg_ids = torch.zeros(f, dtype=torch.int64, device=feats.device)
        for i in range(f):  # frames, not tokens: a segment depends on the previous frame
            if self._new_segment(prev, glob[i], length) or rep is None or rep.shape[0] != n:
                segment, length, rep = segment + 1, 0, feats[i]
                keep[i] = True
            elif self.params.dedup == "similar":
                keep[i] = (feats[i] * rep).sum(-1) < self.params.dedup_tau
                rep = torch.where(keep[i, :, None], feats[i], rep)
            prev, length, seg_ids[i] = glob[i], length + 1, segment
        new_state = {"prev": None if prev is None else prev.clone(), "rep": None if rep is None else rep.clone(),
                     "segment": int(segment), "length": int(length)}
        idx = torch.nonzero(keep.reshape(-1), as_tuple=True)[0]
        out = tokens.gather(idx)
        return new_state, TokenSet(out.features, out.time, out.frame, out.row, out.col, out.size,
                                   {**out.side, "segment": seg_ids.repeat_interleave(n)[idx]}, out.grid)

    def _new_segment(self, prev: torch.Tensor | None, current: torch.Tensor, length: int) -> bool:
        if prev is None:
            return True
        if self.params.max_segment_frames and length >= self.params.max_segment_frames:
            return True
        return float((prev * current).sum()) < self.params.tau


def _on(saved: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A state tensor on the features' device (a state loaded from the memory store is on the CPU)."""
    return None if saved is None else saved.to(like.device)
