"""A stream's bounded rolling memory of compressed tokens.

Consolidation follows MovieChat (Song et al., "MovieChat: From Dense Token to Sparse Memory for Long
Video Understanding", arXiv 2307.16449, CVPR 2024, section 3.2 "memory consolidation"): repeatedly
merge the most similar temporally adjacent entries. vidmem works per token: the temporal neighbour
of a token is the next token (in time) at the same spatial position (row, col). All merges of one
update are planned at once: the ``excess`` most similar neighbour edges are chosen (top-k on cosine
similarity), each chosen run of edges collapses into its latest token with size-weighted features,
which removes exactly one token per edge; side["t_start"] keeps the earliest time a token stands for,
so ``time`` is when its content was last seen and window queries see the whole span. Only the part
of the excess merging cannot remove (the budget is below the number of distinct spatial positions
held) is evicted, oldest first.
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
        new = replace(new, side={**new.side, "t_start": new.side.get("t_start", new.time).to(torch.float64)})
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
        """Tokens seen inside [t0, t1] (either end open when None), in time order.

        A token stands for the span [side["t_start"], time] of the originals merged into it; it is
        returned when that span meets the window.
        """
        if self.tokens is None:
            return TokenSet.empty(1)
        ts = self.tokens
        inside = torch.ones(len(ts), dtype=torch.bool)
        if t0 is not None:
            inside &= ts.time >= float(t0)
        if t1 is not None:
            inside &= ts.side["t_start"] <= float(t1)
        return ts.gather(torch.nonzero(inside, as_tuple=True)[0])

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
    """Bring ``tokens`` (time-ordered, K) down to at most ``budget``: (tokens, merged, evicted).

    Merging can remove at most one token per temporal edge (K - distinct positions); only the part
    of the excess that merging cannot remove is evicted, oldest first, before merging.
    """
    budget = max(budget, 0)
    excess = len(tokens) - budget
    if excess <= 0:
        return tokens, 0, 0
    edges = len(tokens) - int(torch.unique(tokens.position).numel())
    early = max(0, excess - edges)
    kept = tokens.gather(torch.arange(early, len(tokens))) if early else tokens
    merged = merge_temporal_neighbours(kept, len(kept) - budget)
    late = max(0, len(merged) - budget)
    if late:
        merged = merged.gather(torch.arange(late, len(merged)))
    return merged, len(kept) - len(merged) - late, early + late


def merge_temporal_neighbours(tokens: TokenSet, count: int) -> TokenSet:
    """Merge up to ``count`` most similar (token, next token at the same position) pairs.

    tokens: K time-ordered tokens carrying side["t_start"]. Returns K - min(count, #edges) tokens in
    time order; each run of chosen edges collapses into its latest token (size-weighted mean, sizes
    summed), whose side["t_start"] becomes the run's earliest start.
    """
    k = len(tokens)
    order = stable_argsort(tokens.position)  # [K] grouped by position, time order inside a position
    same = tokens.position[order[1:]] == tokens.position[order[:-1]]  # [K-1] edge exists
    edges = torch.nonzero(same, as_tuple=True)[0]
    if count <= 0 or edges.numel() == 0:
        return tokens
    sim = cosine_rows(tokens.features[order[edges]], tokens.features[order[edges + 1]])
    chosen = edges[torch.topk(sim, min(count, edges.numel())).indices]
    forward = torch.zeros(k, dtype=torch.bool)
    forward[chosen] = True  # sorted slot j merges into slot j+1 when forward[j]
    slots = torch.arange(k)
    tail_slot = torch.flip(torch.cummin(torch.flip(torch.where(forward, k, slots), [0]), 0).values, [0])
    target = torch.empty(k, dtype=torch.int64)
    target[order] = order[tail_slot]  # every run ends in its latest token
    first_seen = tokens.side.get("t_start", tokens.time)
    start = first_seen.scatter_reduce(0, target, first_seen, "amin")
    merged = tokens.merge(target)
    return replace(merged, side={**merged.side, "t_start": start[target == slots]})
