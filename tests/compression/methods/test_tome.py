"""ToMe against a direct, loop-based reading of bipartite soft matching (Bolya et al., ICLR 2023, sec. 3)."""

from __future__ import annotations

import math

import pytest
import torch

from compression.methods.tome import tome_round, tome_to
from compression.registry import build_method
from compression.tokens import TokenSet
from tests.compression.helpers import synthetic_block


def reference_bipartite_soft_matching(x: list[list[float]], size: list[float], r: int):  # type: ignore[no-untyped-def]
    """The paper's steps, one token at a time: A = even, B = odd; one edge per A token to its most
    similar B token (cosine); the r most similar edges merge A into B with size-weighted averaging.
    Returns {original index of each surviving token: (features, size)}."""

    def cos(u: list[float], v: list[float]) -> float:
        dot = sum(a * b for a, b in zip(u, v, strict=True))
        return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    a_side, b_side = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    edges = []
    for a in a_side:
        best_b, best = None, -math.inf
        for b in b_side:
            s = cos(x[a], x[b])
            if s > best:
                best_b, best = b, s
        edges.append((best, a, best_b))
    edges.sort(key=lambda e: -e[0])
    merged_into = {a: b for _, a, b in edges[: min(r, len(a_side), len(b_side))]}
    acc = {i: ([v * size[i] for v in x[i]], size[i]) for i in range(len(x)) if i not in merged_into}
    for a, b in merged_into.items():
        feats, s = acc[b]
        acc[b] = ([f + v * size[a] for f, v in zip(feats, x[a], strict=True)], s + size[a])
    return {i: ([f / s for f in feats], s) for i, (feats, s) in acc.items()}


def _as_tokens(features: torch.Tensor, sizes: torch.Tensor) -> TokenSet:
    k = features.shape[0]
    ar = torch.arange(k)
    return TokenSet(features, ar.to(torch.float64), ar, torch.zeros(k, dtype=torch.int64), ar, sizes, {}, (1, k))


@pytest.mark.parametrize(("tokens", "r", "seed"), [(20, 4, 0), (21, 10, 1), (64, 32, 2), (7, 1, 3)])
def test_tome_round_when_compared_with_the_loop_reference_then_identical(tokens, r, seed):
    # given random tokens with uneven sizes (as after earlier merges)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 6, generator=gen, dtype=torch.float64).float()
    sizes = torch.randint(1, 5, (tokens,), generator=gen).float()
    # when one round runs, vectorised and by the loop reference
    out = tome_round(_as_tokens(x, sizes), r)
    ref = reference_bipartite_soft_matching(x.tolist(), sizes.tolist(), r)
    # then the same tokens survive with the same size-weighted features and sizes
    assert out.col.tolist() == sorted(ref), "surviving tokens differ from the reference"
    for i, (col, feats, size) in enumerate(zip(out.col.tolist(), out.features, out.size, strict=True)):
        ref_feats, ref_size = ref[col]
        assert size.item() == pytest.approx(ref_size), f"size of token {i}"
        assert feats.tolist() == pytest.approx(ref_feats, abs=1e-5), f"features of token {i}"


def test_tome_to_when_ratio_needs_several_rounds_then_repeats_the_reference_round():
    # given 40 tokens reduced to 9 (needs 3 rounds: 40 -> 20 -> 10 -> 9)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 4, generator=gen)
    out = tome_to(_as_tokens(x, torch.ones(40)), 9)
    # when the reference is applied round after round on its own output
    feats, sizes = x.tolist(), [1.0] * 40
    for r in (20, 10, 1):
        ref = reference_bipartite_soft_matching(feats, sizes, r)
        feats, sizes = [ref[i][0] for i in sorted(ref)], [ref[i][1] for i in sorted(ref)]
    # then both agree
    assert len(out) == 9
    assert out.size.tolist() == pytest.approx(sizes)
    assert out.features.tolist() == [pytest.approx(f, abs=1e-5) for f in feats]


def test_tome_when_spacetime_then_tokens_merge_across_frames():
    # given two identical frames: the best partner of every token is its copy in the other frame
    block = synthetic_block(frames=2, grid=(1, 4), seed=1)
    same = block.features[:1].repeat(2, 1, 1)
    from dataclasses import replace

    block = replace(block, features=same)
    # when a spacetime round keeps half the tokens
    _, out = build_method("tome:ratio=0.5").update({}, block)
    # then sizes add up and merges crossed the frame boundary: a frame's tokens stand for more than its own 4
    assert len(out) == 4 and float(out.size.sum()) == 8.0
    per_frame = torch.bincount(out.frame, weights=out.size, minlength=2).tolist()
    assert max(per_frame) > 4.0, f"no token absorbed one of the other frame: sizes per frame {per_frame}"


def test_tome_when_spatial_then_every_frame_keeps_the_same_count():
    _, out = build_method("tome:ratio=0.25,mode=spatial").update({}, synthetic_block(frames=3, seed=2))
    assert torch.bincount(out.frame).tolist() == [4, 4, 4]
    assert torch.bincount(out.frame, weights=out.size).tolist() == [16.0, 16.0, 16.0], "merges stay in-frame"


@pytest.mark.parametrize("spec", ["tome:matmul=bf16", "vtm:matmul=bf16"])
def test_merging_methods_when_matmul_is_bf16_then_counts_and_sizes_match_fp32(spec):
    block = synthetic_block(frames=4, seed=6)
    _, fast = build_method(spec).update({}, block)
    _, exact = build_method(spec.split(":")[0]).update({}, block)
    assert len(fast) == len(exact) and float(fast.size.sum()) == float(exact.size.sum()) == 64.0


# Fixed tensors with the expected values worked out by hand from the upstream algorithm (facebookresearch/ToMe,
# tome/merge.py ``bipartite_soft_matching`` + ``merge_wavg``): A = even indices, B = odd; cosine of the
# L2-normalised metric; each A token's best B partner; the r best edges (sorted by score, descending) merge
# into their partners with size-weighted sums, the rest of A stays.
#   x0 = (1, 0)  x1 = (1, 0)  x2 = (0.1, 1)  x3 = (0, 2)  x4 = (2, 1)  x5 = (-1, 0)
#   A0: cos with x1, x3, x5 = 1, 0, -1           -> partner 1, score 1
#   A2: cos = 0.0995, 0.9950, -0.0995             -> partner 3, score 0.9950
#   A4: cos = 0.8944, 0.4472, -0.8944             -> partner 1, score 0.8944
# edges by score: A0 -> 1, A2 -> 3, A4 -> 1.
_X = [[1.0, 0.0], [1.0, 0.0], [0.1, 1.0], [0.0, 2.0], [2.0, 1.0], [-1.0, 0.0]]


@pytest.mark.parametrize(("r", "sizes", "expected"), [
    # r = 2, unit sizes: x1' = (x0 + x1)/2 = (1, 0) size 2; x3' = (x2 + x3)/2 = (0.05, 1.5) size 2; x4, x5 stay
    (2, [1, 1, 1, 1, 1, 1], {1: ([1.0, 0.0], 2.0), 3: ([0.05, 1.5], 2.0), 4: ([2.0, 1.0], 1.0),
                             5: ([-1.0, 0.0], 1.0)}),
    # r = 3, sizes (1, 2, 1, 1, 3, 1): x1' = (1*x0 + 2*x1 + 3*x4)/6 = (9/6, 3/6) size 6; x3' = (x2 + x3)/2 size 2
    (3, [1, 2, 1, 1, 3, 1], {1: ([1.5, 0.5], 6.0), 3: ([0.05, 1.5], 2.0), 5: ([-1.0, 0.0], 1.0)}),
    # r = 5 is capped at 6 // 2 = 3 (at most half the tokens per round)
    (5, [1, 1, 1, 1, 1, 1], {1: ([4 / 3, 1 / 3], 3.0), 3: ([0.05, 1.5], 2.0), 5: ([-1.0, 0.0], 1.0)}),
])
def test_tome_round_when_fixed_tensors_then_the_upstream_values(r, sizes, expected):
    from compression.methods.tome import bipartite_targets

    tokens = _as_tokens(torch.tensor(_X), torch.tensor(sizes, dtype=torch.float32))
    targets = bipartite_targets(tokens.features[None], r)[0].tolist()
    assert targets == [[1, 1, 3, 3, 4, 5], [1, 1, 3, 3, 1, 5], [1, 1, 3, 3, 1, 5]][min(r, 3) - 2]
    out = tome_round(tokens, r)
    got = {int(i): (f.tolist(), float(s)) for i, f, s in zip(out.col, out.features, out.size, strict=True)}
    assert got.keys() == expected.keys()
    for i, (feats, size) in expected.items():
        assert got[i][1] == size and torch.allclose(torch.tensor(got[i][0]), torch.tensor(feats), atol=1e-6), (i, got)
