"""``adatp-local``: AdaTP's query-agnostic half: segmentation plus local (spatial) de-duplication (stage 1).

Sun, Shen et al., "AdaTP: Attention-Debiased Token Pruning for Video Large Language Models",
arXiv 2505.20100, Findings of EMNLP 2025. The paper body could not be read; this follows the
reconstruction in research/seed-methods.md section 2.4, steps 1, 2 and 4:

- segmentation (step 2, [SUMMARY]): frames t-1 and t share a segment when the cosine similarity of
  their global features is >= ``tau`` (0.95, [UNVERIFIED]); a segment continues across chunk
  boundaries because the previous frame's global feature and the segment id are the state;
- the global feature v_p (step 1) is the mean of the frame's tokens [RECONSTRUCTED, ASSUMPTION];
- local debiasing (step 4, [UNVERIFIED] "one representative per spatial position per segment"):
  the first occurrence of each position in a segment is its representative [RECONSTRUCTED: the
  paper may keep the best-attended one; with no look-ahead the first is the only streaming
  choice]; later tokens at that position are dropped, unless ``dedup_tau`` is set, in which case a
  token less similar than ``dedup_tau`` to its representative is kept and becomes the new one;
- ``max_segment_frames`` (0 = off) forces a new segment after that many frames [ASSUMPTION], so a
  long static scene is still refreshed.

Each kept token carries side["segment"] (stream-wide segment id), which stage-2 ``adatp`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        dedup_tau: float | None = None  # None: strictly one representative per position per segment
        max_segment_frames: int = 0  # 0: segments end only on a similarity drop

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
            elif self.params.dedup_tau is not None:
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
