"""Helpers for the compression tests: synthetic token blocks and small test doubles of the model.

The doubles stand in for the Video LLM (ModelHooks) and for a trained CaCoVID policy
(TokenScorer); they are fakes of other packages' objects, not of compression code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from compression.tokens import TokenBlock, TokenSet


def synthetic_block(frames: int = 8, grid: tuple[int, int] = (4, 4), dim: int = 16, *, frame_offset: int = 0,
                    seed: int = 0, fps: float = 2.0) -> TokenBlock:
    """A block of random features [F, N, D] with timestamps at ``fps`` and a "motion" side [F, N]."""
    n = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(frames, n, dim, generator=gen)
    times = (torch.arange(frames, dtype=torch.float64) + frame_offset) / fps
    motion = torch.rand(frames, n, generator=gen)
    return TokenBlock(feats, times, grid, frame_offset, {"motion": motion})


def scene_video(frames: int, scene_length: int, grid: tuple[int, int] = (4, 4), dim: int = 16,
                noise: float = 0.05, seed: int = 0) -> Tensor:
    """Features [frames, N, D] of static scenes, each ``scene_length`` frames long, plus small noise."""
    n = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(seed)
    n_scenes = (frames + scene_length - 1) // scene_length
    bases = torch.randn(n_scenes, n, dim, generator=gen)
    scene_of = torch.arange(frames) // scene_length
    return bases[scene_of] + noise * torch.randn(frames, n, dim, generator=gen)


def chunks_of(features: Tensor, chunk: int, grid: tuple[int, int], fps: float = 2.0) -> list[TokenBlock]:
    """Split a video's features [F, N, D] into consecutive blocks of ``chunk`` frames."""
    blocks = []
    for start in range(0, features.shape[0], chunk):
        part = features[start : start + chunk]
        times = torch.arange(start, start + part.shape[0], dtype=torch.float64) / fps
        blocks.append(TokenBlock(part, times, grid, start, {"motion": part.norm(dim=-1)}))
    return blocks


def run_chunked(method: object, blocks: list[TokenBlock]) -> TokenSet:
    """A stage-1 method's output over ``blocks`` fed one by one from a fresh state, concatenated."""
    state, parts = method.init_state(), []
    for block in blocks:
        state, out = method.update(state, block)
        parts.append(out)
    return TokenSet.concat(parts)


class FakeHooks:
    """A test double of the Video LLM: attention and relevance are fixed functions of the features."""

    def __init__(self, attention: Callable[[TokenSet], Tensor] | None = None,
                 relevance: Callable[[TokenSet], Tensor] | None = None) -> None:
        self.attention, self.relevance = attention, relevance
        self.calls: list[str] = []

    def probe_attention(self, question: str, tokens: TokenSet, layer: int) -> Tensor:
        self.calls.append(f"probe_attention@{layer}")
        if self.attention is not None:
            return self.attention(tokens)
        return torch.softmax(tokens.features.float() @ _direction(tokens, 1), 0)

    def text_relevance(self, question: str, tokens: TokenSet) -> Tensor:
        self.calls.append("text_relevance")
        if self.relevance is not None:
            return self.relevance(tokens)
        return torch.tanh(tokens.features.float() @ _direction(tokens, 2))


    def question_states(self, question: str, tokens: TokenSet, layer: int) -> tuple[Tensor, Tensor]:
        """States [1, 2] and [K, 2] whose cosine is the relevance function: token i is r_i e0 + sqrt(1 - r_i^2) e1
        and the question is e0, so AdaTP's hidden-state relevance sees exactly ``relevance`` (clamped to [-1, 1])."""
        self.calls.append(f"question_states@{layer}")
        r = self.text_relevance(question, tokens).float().clamp(-1, 1)
        self.calls.pop()
        question = torch.tensor([[1.0, 0.0]], device="cpu").to(r.device)  # on the tokens' device, as an adapter's
        return question, torch.stack([r, (1 - r * r).clamp_min(0).sqrt()], dim=-1)


class FakeScorer:
    """A test double of a trained CaCoVID policy: token score = first feature, frame score given."""

    def __init__(self, frame_scores: Callable[[TokenSet], Tensor] | None = None) -> None:
        self.frame_scores = frame_scores

    def score(self, question: str, tokens: TokenSet, hooks: object) -> tuple[Tensor, Tensor]:
        u = tokens.features[:, 0].float()
        if self.frame_scores is not None:
            return u, self.frame_scores(tokens)
        return u, torch.cos(tokens.frames().float())


def _direction(tokens: TokenSet, seed: int) -> Tensor:
    """A fixed random direction [D] on the tokens' device, as a real adapter's outputs would be."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tokens.dim, generator=gen, device="cpu").to(tokens.features.device)


def build_objects(name: str) -> dict:
    """Constructor objects a method needs in the contract tests (a policy for cacovid)."""
    return {"scorer": FakeScorer()} if name == "cacovid" else {}


def assert_aligned(tokens: TokenSet) -> None:
    k = len(tokens)
    for field in ("time", "frame", "row", "col", "size"):
        assert getattr(tokens, field).shape == (k,), f"{field} has shape {tuple(getattr(tokens, field).shape)}"
    for key, value in tokens.side.items():
        assert value.shape[0] == k, f"side[{key!r}] has {value.shape[0]} rows for {k} tokens"
    assert tokens.features.shape[0] == k
    assert bool((tokens.time[1:] >= tokens.time[:-1]).all()), "tokens must stay in time order"
    assert not bool(torch.isnan(tokens.features).any()), "features hold NaN"
    assert tokens.time.dtype == torch.float64 and tokens.frame.dtype == torch.int64
    assert tokens.size.dtype == torch.float32


def assert_same_tokens(a: TokenSet, b: TokenSet) -> None:
    assert len(a) == len(b), f"{len(a)} != {len(b)} tokens"
    for field in ("time", "frame", "row", "col", "size"):
        assert torch.equal(getattr(a, field), getattr(b, field)), f"{field} differs"
    assert torch.allclose(a.features, b.features, atol=1e-6), "features differ"
    assert a.side.keys() == b.side.keys()
    for key in a.side:
        torch.testing.assert_close(a.side[key], b.side[key], rtol=0, atol=0, equal_nan=True,
                                   msg=f"side[{key!r}] differs")
