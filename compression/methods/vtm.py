"""``vtm``: Video Token Merging with saliency-driven target selection (stage 1).

Lee et al., "Video Token Merging for Long-form Video Understanding", arXiv 2410.23782, NeurIPS 2024.
Section 3.1 (Eqs. 1-5): tokens are partitioned into targets T (|T| = N/gamma) and sources S; every
source is matched to its most similar target (cosine) and only the R = merge_ratio*|S| most similar
sources are merged (Eq. 5; R = 0.8|S| by Table 9, gamma = 6 by Table 5). Target selection
(sections 3.2-3.4):

- ``naive`` (Eq. 1): every gamma-th token is a target;
- ``center`` / ``boundary`` (region-concentrated, section 3.2): ``center`` takes half of the
  |T| = round(N/gamma) targets from the central H/2 x W/2 region, i.e. partition factor gamma/2 there
  and 3*gamma/2 elsewhere (a target density three times the rest's); ``boundary`` is the opposite
  concentration with the same |T| (budget-matched: target density three times higher outside the
  centre than inside), each region's targets evenly spaced over its tokens in time order;
- ``motion`` (section 3.3): targets drawn with p_i = softmax(v)_i from the per-token motion
  magnitude v = block.side["motion"] [F, N] (codec motion vectors passed by ingest);
- ``learnable`` (section 3.4, Fig. 4, Eqs. 8-10): saliency s = tanh(x U_s) from a trained vector
  U_s [D] (``saliency_path=`` file or ``saliency=`` tensor; trained by ``bench/train_vtm.py``, which
  samples the targets from softmax(s) as the paper's main path does). At inference the default takes the top-|T|
  saliency tokens (``sample=true`` draws from softmax(s)): the paper runs only the main path at
  inference and does not say whether it samples there.

Deviations, on purpose, for a frozen Video LLM: the chunk is one window (the paper's blocks see
L_i frames); the metric is the encoder features, not attention keys (there are none before the LLM);
merged features are size-weighted means (the paper's plain average, Eq. 4, equals it for fresh
size-1 tokens); merged tokens keep the target's time and position; ``matmul=bf16`` computes the
similarities in bf16 (faster on CPUs with bf16 units, near-ties may resolve differently).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from compression.ops import evenly_spaced
from compression.registry import register_method
from compression.tokens import TokenBlock, TokenSet


def load_saliency(path: str | Path) -> Tensor:
    """A learnable-VTM saliency vector U_s [D] from a torch file (a tensor or a dict holding "u_s")."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(blob, dict):
        blob = blob.get("u_s", blob.get("saliency"))
    if not isinstance(blob, Tensor):
        raise ValueError(f"{path} holds no saliency vector (a tensor or a dict with key 'u_s')")
    return blob.reshape(-1).float()


@register_method("vtm", stage=1)
class VideoTokenMerging:
    @dataclass(frozen=True)
    class Params:
        target: Literal["naive", "center", "boundary", "motion", "learnable"] = "naive"
        gamma: float = 6.0  # partition factor: |T| = N / gamma (Table 5)
        merge_ratio: float = 0.8  # R = merge_ratio * |S| (Table 9)
        sample: bool = False  # learnable: sample targets from softmax(s) instead of top-k
        saliency_path: str = ""
        seed: int = 0
        matmul: Literal["fp32", "bf16"] = "fp32"  # dtype of the source-target similarity matmul

    def __init__(self, params: Params, saliency: Tensor | None = None) -> None:
        if params.gamma < 1:
            raise ValueError(f"vtm gamma must be >= 1, got {params.gamma}")
        if saliency is None and params.saliency_path:
            saliency = load_saliency(params.saliency_path)
        if params.target == "learnable" and saliency is None:
            raise ValueError("vtm:target=learnable needs a trained saliency vector: pass saliency_path=<file> "
                             "(see `vidmem train vtm`) or saliency=<tensor [D]>")
        self.params, self.saliency = params, saliency

    def init_state(self) -> dict:
        return {}

    def update(self, state: dict, block: TokenBlock) -> tuple[dict, TokenSet]:
        tokens = block.to_tokenset()
        if len(tokens) == 0:
            return state, tokens
        targets = self.targets(tokens, block)
        dtype = torch.bfloat16 if self.params.matmul == "bf16" else torch.float32
        return state, merge_sources(tokens, targets, self.params.merge_ratio, dtype)

    def targets(self, tokens: TokenSet, block: TokenBlock) -> Tensor:
        """Boolean target mask [F*N]."""
        n_total, p = len(tokens), self.params
        k = max(1, round(n_total / p.gamma))
        if p.target == "naive":
            return torch.arange(n_total, device=tokens.frame.device) % max(1, round(p.gamma)) == 0
        if p.target in ("center", "boundary"):
            return region_targets(tokens, k, centre_dense=p.target == "center")
        gen = torch.Generator().manual_seed(p.seed * 1_000_003 + block.frame_offset)
        if p.target == "motion":
            if "motion" not in block.side:
                raise ValueError("vtm:target=motion needs block.side['motion'] [F, N] from ingest")
            return pick_targets(block.side["motion"].reshape(-1).float(), k, sample=True, gen=gen)
        if self.saliency.numel() != tokens.dim:
            raise ValueError(f"saliency vector has {self.saliency.numel()} entries, features have D={tokens.dim}")
        return pick_targets(saliency(tokens.features, self.saliency), k, sample=p.sample, gen=gen)


def saliency(features: Tensor, u_s: Tensor) -> Tensor:
    """s = tanh(X U_s) (section 3.4): features [K, D], u_s [D] -> [K] in (-1, 1)."""
    return torch.tanh(features.float() @ u_s.to(features.device))


def pick_targets(scores: Tensor, k: int, sample: bool, gen: torch.Generator) -> Tensor:
    """Target mask [K]: k tokens drawn without replacement from softmax(scores) (the motion and learnable
    variants' p_i) when ``sample``, else the top-k scores (ties to the lower index)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if sample:  # drawn on the CPU with a CPU generator, so a seed picks the same targets on every device
        probs = torch.softmax(scores, 0).cpu()  # CPU-GPU sync
        idx = torch.multinomial(probs, min(k, scores.numel()), replacement=False, generator=gen).to(scores.device)
    else:
        idx = torch.sort(scores, descending=True, stable=True).indices[:k]
    mask[idx] = True
    return mask


def region_targets(tokens: TokenSet, k: int, centre_dense: bool, density_ratio: float = 3.0) -> Tensor:
    """Boolean target mask [K] with exactly min(k, K) targets, ``density_ratio`` times denser in the dense
    region (the centre H/2 x W/2 for ``centre_dense``, the rest otherwise) than in the other one.

    With the centre a quarter of the grid, ``centre_dense`` puts half the targets there: the paper's
    gamma/2 inside and 3*gamma/2 outside. Each region's targets are evenly spaced over its tokens."""
    rows, cols = tokens.grid
    centre = ((tokens.row >= rows // 4) & (tokens.row < rows - rows // 4)
              & (tokens.col >= cols // 4) & (tokens.col < cols - cols // 4))
    dense = centre if centre_dense else ~centre
    n_dense, n_total = int(dense.sum()), len(tokens)
    k = min(k, n_total)
    weight = density_ratio * n_dense
    k_dense = min(n_dense, round(k * weight / max(weight + (n_total - n_dense), 1e-12)))
    k_dense = max(k_dense, k - (n_total - n_dense))  # the sparse region cannot hold more than its tokens
    mask = torch.zeros(n_total, dtype=torch.bool, device=tokens.frame.device)
    for region, count in ((dense, k_dense), (~dense, k - k_dense)):
        idx = torch.nonzero(region, as_tuple=True)[0]
        mask[idx[evenly_spaced(idx.numel(), count, idx.device)]] = True
    return mask


def merge_sources(tokens: TokenSet, targets: Tensor, merge_ratio: float,
                  matmul_dtype: torch.dtype = torch.float32) -> TokenSet:
    """Merge the R = merge_ratio*|S| sources most similar to their best target (Eqs. 3-5)."""
    t_idx = torch.nonzero(targets, as_tuple=True)[0]
    s_idx = torch.nonzero(~targets, as_tuple=True)[0]
    r = int(round(merge_ratio * s_idx.numel()))
    if r <= 0 or t_idx.numel() == 0:
        return tokens
    x = F.normalize(tokens.features.float(), dim=-1).to(matmul_dtype)
    best, partner = (x[s_idx] @ x[t_idx].T).float().max(dim=-1)  # [|S|] best target per source
    chosen = torch.sort(best, descending=True, stable=True).indices[:r]
    target = torch.arange(len(tokens), device=t_idx.device)
    target[s_idx[chosen]] = t_idx[partner[chosen]]
    return tokens.merge(target)
