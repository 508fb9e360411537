"""A stream's bounded rolling memory of compressed tokens.

Consolidation follows MovieChat (Song et al., "MovieChat: From Dense Token to Sparse Memory for Long
Video Understanding", arXiv 2307.16449, CVPR 2024, section 3.2 "memory consolidation"): repeatedly
merge the most similar temporally adjacent entries. vidmem works per token: the temporal neighbour
of a token is the next token (in time) at the same spatial position (row, col). All merges of one
update are planned at once: the ``excess`` most similar neighbour edges are chosen (top-k on cosine
similarity), each chosen run of edges collapses into its earliest token with size-weighted features,
which removes exactly one token per edge. Only when merging cannot reach the budget (the budget is
below the number of distinct spatial positions held) are the oldest tokens evicted.
Cost: one stable sort plus one top-k, O(n log n) in memory size n.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from compression.ops import cosine_rows, stable_argsort
from compression.tokens import TokenSet

MAGIC = b"VMMEM1"


@dataclass(frozen=True, eq=False)
class Memory:
    """Immutable memory: ``append`` returns a new Memory that never exceeds ``budget_tokens``."""

    budget_tokens: int
    tokens: TokenSet | None = None
    chunks_applied: int = 0
    tokens_seen: int = 0
    tokens_evicted: int = 0
    tokens_merged: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return 0 if self.tokens is None else len(self.tokens)

    def append(self, new: TokenSet) -> Memory:
        """Append a stage-1 TokenSet (later in time than what is held), then consolidate to budget."""
        merged = new if self.tokens is None else TokenSet.concat([self.tokens, new])
        if len(merged) and bool((merged.time[1:] < merged.time[:-1]).any()):
            merged = merged.gather(stable_argsort(merged.time))
        consolidated, n_merged, n_evicted = consolidate(merged, self.budget_tokens)
        return replace(
            self, tokens=consolidated, chunks_applied=self.chunks_applied + 1,
            tokens_seen=self.tokens_seen + len(new), tokens_merged=self.tokens_merged + n_merged,
            tokens_evicted=self.tokens_evicted + n_evicted,
        )

    def window(self, t0: float | None = None, t1: float | None = None) -> TokenSet:
        """Tokens with t0 <= time <= t1 (either end open when None)."""
        if self.tokens is None:
            return TokenSet.empty(1)
        lo = 0 if t0 is None else int(torch.searchsorted(self.tokens.time, torch.tensor([float(t0)],
                                                                                     dtype=torch.float64)))
        hi = len(self.tokens) if t1 is None else int(
            torch.searchsorted(self.tokens.time, torch.tensor([float(t1)], dtype=torch.float64), right=True))
        return self.tokens.gather(torch.arange(lo, max(lo, hi)))

    def to_bytes(self) -> bytes:
        return self._bytes

    @cached_property
    def _bytes(self) -> bytes:
        head = json.dumps({
            "budget_tokens": self.budget_tokens, "chunks_applied": self.chunks_applied,
            "tokens_seen": self.tokens_seen, "tokens_evicted": self.tokens_evicted,
            "tokens_merged": self.tokens_merged, "stats": self.stats,
        }, separators=(",", ":")).encode()
        body = b"" if self.tokens is None else self.tokens.to_bytes()
        return MAGIC + struct.pack("<I", len(head)) + head + body

    @property
    def nbytes(self) -> int:
        """Size of the serialised memory (what a store holds per stream)."""
        return len(self._bytes)

    @staticmethod
    def from_bytes(data: bytes) -> Memory:
        if data[: len(MAGIC)] != MAGIC:
            raise ValueError("not a serialised Memory")
        (n,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        head = json.loads(data[start : start + n])
        body = data[start + n :]
        return Memory(tokens=TokenSet.from_bytes(body) if body else None, **head)


def consolidate(tokens: TokenSet, budget: int) -> tuple[TokenSet, int, int]:
    """Bring ``tokens`` (time-ordered, K) down to at most ``budget``: (tokens, merged, evicted)."""
    excess = len(tokens) - max(budget, 0)
    if excess <= 0:
        return tokens, 0, 0
    merged = merge_temporal_neighbours(tokens, excess)
    n_merged = len(tokens) - len(merged)
    evict = len(merged) - max(budget, 0)
    if evict > 0:
        merged = merged.gather(torch.arange(evict, len(merged)))
    return merged, n_merged, max(evict, 0)


def merge_temporal_neighbours(tokens: TokenSet, count: int) -> TokenSet:
    """Merge up to ``count`` most similar (token, next token at the same position) pairs.

    tokens: K time-ordered tokens. Returns K - min(count, #edges) tokens in time order; each run of
    chosen edges collapses into its earliest token (size-weighted mean, sizes summed).
    """
    k = len(tokens)
    order = stable_argsort(tokens.position)  # [K] grouped by position, time order inside a position
    same = tokens.position[order[1:]] == tokens.position[order[:-1]]  # [K-1] edge exists
    edges = torch.nonzero(same, as_tuple=True)[0]
    if count <= 0 or edges.numel() == 0:
        return tokens
    sim = cosine_rows(tokens.features[order[edges]], tokens.features[order[edges + 1]])
    chosen = edges[torch.topk(sim, min(count, edges.numel())).indices]
    link = torch.zeros(k, dtype=torch.bool)
    link[chosen + 1] = True  # sorted slot j merges into slot j-1 when link[j]
    slots = torch.arange(k)
    head_slot = torch.cummax(torch.where(link, 0, slots), 0).values  # start of each run
    target = torch.empty(k, dtype=torch.int64)
    target[order] = order[head_slot]
    return tokens.merge(target)
