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

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from torch import Tensor

from compression.ops import cosine_rows, stable_argsort
from compression.tokens import StoredFormatError, TokenSet, pack_tensors, unpack_tensors

_COUNTS = ("budget_tokens", "chunks_applied", "tokens_seen", "tokens_evicted", "tokens_merged")
HELD_DTYPE = torch.float16  # features are held as they are serialised
JOIN_BELOW_ELEMENTS = 1 << 16  # feature parts smaller than this (in all) are joined by one copy (128 KiB in fp16)


@dataclass(frozen=True, eq=False)
class Memory:
    """Immutable memory: ``append`` returns a new Memory that never exceeds ``budget_tokens``."""

    budget_tokens: int
    tokens: TokenSet = field(default_factory=lambda: TokenSet.empty(1))
    chunks_applied: int = 0
    tokens_seen: int = 0
    tokens_evicted: int = 0
    tokens_merged: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def append(self, new: TokenSet) -> Memory:
        """Append a stage-1 TokenSet (later in time than what is held), then consolidate to budget.

        The plan is computed on metadata only; held and new features are copied once, into the result
        (small memories are first joined into one tensor: one small copy costs less than many small ops).
        """
        device = new.features.device if len(new) else self.tokens.features.device
        held = [self._held(self.tokens)] if len(self.tokens) else []
        if held and held[0].features.device != device:
            held = [held[0].to(device)]  # a memory loaded from bytes is on the CPU
        parts = [p for p in [*held, self._held(new)] if len(p)]
        if len(parts) == 2 and float(parts[1].time.min()) < float(parts[0].time.max()):
            joined = TokenSet.concat(parts)  # out of order (rare): reorder, forget cached similarities
            joined = joined.gather(stable_argsort(joined.time))
            joined.side["next_sim"].fill_(float("nan"))
            parts = [joined]
        if not parts:
            return replace(self, chunks_applied=self.chunks_applied + 1)
        tokens, n_merged, n_evicted = consolidate(*join_parts(parts), self.budget_tokens)
        return replace(
            self, tokens=tokens, chunks_applied=self.chunks_applied + 1,
            tokens_seen=self.tokens_seen + len(new), tokens_merged=self.tokens_merged + n_merged,
            tokens_evicted=self.tokens_evicted + n_evicted,
        )

    @staticmethod
    def _held(tokens: TokenSet) -> TokenSet:
        """Tokens as the memory holds them: fp16 features (as serialised), first-seen time, and the
        cached similarity to the next token at the same position (NaN = not known yet)."""
        if tokens.features.dtype == HELD_DTYPE and "t_start" in tokens.side and "next_sim" in tokens.side:
            return tokens
        side = {**tokens.side, "t_start": tokens.side.get("t_start", tokens.time).to(torch.float64),
                "next_sim": tokens.side.get("next_sim", tokens.time.new_full((len(tokens),), float("nan"),
                                                                          dtype=torch.float32))}
        return replace(tokens, features=tokens.features.to(HELD_DTYPE), side=side)

    def window(self, t0: float | None = None, t1: float | None = None) -> TokenSet:
        """Tokens seen inside [t0, t1] (either end open when None), in time order.

        A token stands for the span [side["t_start"], time] of the originals merged into it; it is
        returned when that span meets the window.
        """
        ts = self.tokens
        if len(ts) == 0:
            return ts
        inside = torch.ones(len(ts), dtype=torch.bool, device=ts.time.device)
        if t0 is not None:
            inside &= ts.time >= float(t0)
        if t1 is not None:
            inside &= ts.side["t_start"] <= float(t1)
        return ts.gather(torch.nonzero(inside, as_tuple=True)[0])

    def to_bytes(self) -> bytes:
        return self._bytes

    @cached_property
    def _bytes(self) -> bytes:
        """safetensors: the tokens' tensors under ``tokens.``; counts, stats and the grid in the JSON metadata."""
        tensors, token_meta = self.tokens.to_parts("tokens.")
        meta = {name: getattr(self, name) for name in _COUNTS}
        return pack_tensors("Memory", tensors, {**meta, "stats": self.stats, "tokens": token_meta})

    @property
    def nbytes(self) -> int:
        """Size of the serialised memory (what a store holds per stream)."""
        return len(self._bytes)

    @staticmethod
    def from_bytes(data: bytes) -> Memory:
        """Read :meth:`to_bytes`; raises StoredFormatError (a ValueError) on anything else, never unpickles."""
        tensors, meta = unpack_tensors(data, "Memory")
        counts = {name: meta.get(name) for name in _COUNTS}
        bad = [name for name, v in counts.items() if type(v) is not int or v < 0]
        if bad or not isinstance(meta.get("stats"), dict):
            raise StoredFormatError(f"stored Memory is malformed: {bad or 'stats'} not valid")
        tokens = TokenSet.from_parts(tensors, meta.get("tokens"), "tokens.")
        return Memory(tokens=tokens, stats=meta["stats"], **counts)


@dataclass(frozen=True)
class Rows:
    """Feature rows of several tensors [n_i, D] seen as one concatenation, without copying them."""

    parts: tuple[Tensor, ...]

    @cached_property
    def offsets(self) -> Tensor:
        return torch.cumsum(torch.tensor([0] + [len(p) for p in self.parts], device=self.parts[0].device), 0)

    def take(self, idx: Tensor) -> Tensor:
        """Rows at ascending ``idx`` [M] -> [M, D], copied once."""
        first = self.parts[0]
        if len(self.parts) == 1:
            return first.index_select(0, idx)
        out = torch.empty(len(idx), first.shape[1], dtype=first.dtype, device=first.device)
        bounds = torch.searchsorted(idx, self.offsets).tolist()
        for part, base, a, b in zip(self.parts, self.offsets.tolist(), bounds, bounds[1:], strict=False):
            if b > a:
                torch.index_select(part, 0, idx[a:b] - base, out=out[a:b])
        return out

    def at(self, idx: Tensor) -> Tensor:
        """Rows at any ``idx`` [M] -> [M, D] float32."""
        if len(self.parts) == 1:
            return self.parts[0][idx].to(torch.float32)
        order = stable_argsort(idx)
        out = torch.empty(len(idx), self.parts[0].shape[1], dtype=torch.float32, device=idx.device)
        out[order] = self.take(idx[order]).to(torch.float32)
        return out


def join_parts(parts: list[TokenSet], join_below: int = JOIN_BELOW_ELEMENTS) -> tuple[TokenSet, Rows]:
    """Time-ordered parts as (metadata, feature rows) for :func:`consolidate`. Parts holding fewer than
    ``join_below`` feature elements in all are joined by one copy (cheaper than many small ops); larger
    ones are read in place, so held features are copied only once, into the result."""
    if len(parts) == 1 or sum(p.features.numel() for p in parts) < join_below:
        joined = TokenSet.concat(parts)
        return joined, Rows((joined.features,))
    meta = TokenSet.concat([replace(p, features=p.features[:, :0]) for p in parts])
    return meta, Rows(tuple(p.features for p in parts))


def consolidate(meta: TokenSet, rows: Rows, budget: int) -> tuple[TokenSet, int, int]:
    """Bring K time-ordered tokens (metadata ``meta``, features ``rows``) to at most ``budget``.

    Returns (tokens, merged, evicted). Merging can remove one token per temporal edge
    (K - distinct positions); only the part of the excess merging cannot remove is evicted, oldest
    first.
    """
    budget, k = max(budget, 0), len(meta)
    excess = k - budget
    if excess <= 0:
        return replace(meta, features=rows.take(torch.arange(k, device=meta.time.device))), 0, 0
    early = max(0, excess - (k - int(torch.unique(meta.position).numel())))
    live = torch.arange(early, k, device=meta.time.device)
    plan = plan_merges(meta.gather(live), lambda i: rows.at(live[i]), len(live) - budget) if early else \
        plan_merges(meta, rows.at, k - budget)
    slots = live - early
    keep = torch.nonzero(plan.target == slots, as_tuple=True)[0]
    late = max(0, len(keep) - budget)
    keep = keep[late:]
    picked = live[keep] if early else keep  # live is the identity when nothing was evicted early
    fresh = {"t_start": plan.t_start[keep], "next_sim": plan.next_sim[keep]}
    side = {key: fresh[key] if key in fresh else v[picked] for key, v in meta.side.items()} | fresh
    out = TokenSet(rows.take(picked), meta.time[picked], meta.frame[picked], meta.row[picked], meta.col[picked],
                   meta.size[picked], side, meta.grid)
    if len(keep) and plan.dst.numel():
        slot = torch.searchsorted(keep, plan.dst).clamp_max(len(keep) - 1)
        alive = keep[slot] == plan.dst  # merged groups whose representative was not evicted
        out.features[slot[alive]] = plan.features[alive].to(out.features.dtype)
        out.size[slot[alive]] = plan.sizes[alive]
    n_merged = int((plan.target != slots).sum())
    return out, n_merged, early + late


@dataclass(frozen=True)
class MergePlan:
    """Merges over K tokens: target [K] (representative per token), t_start/next_sim [K] after
    merging, and for the G merged groups their representative dst [G], features [G, D], sizes [G]."""

    target: Tensor
    t_start: Tensor
    next_sim: Tensor
    dst: Tensor
    features: Tensor
    sizes: Tensor


def plan_merges(meta: TokenSet, rows_at: Callable[[Tensor], Tensor], count: int) -> MergePlan:
    """Plan up to ``count`` merges of the most similar (token, next token at the same position) pairs.

    Each run of chosen edges collapses into its latest token (size-weighted mean, sizes summed), whose
    t_start becomes the run's earliest. Similarities are cached in side["next_sim"] (NaN = unknown),
    so only edges that are new or touched by a merge are computed: O(K log K) index work plus
    O((new + merged) * D) feature work. ``rows_at(idx)`` returns features [M, D] float32.
    """
    k = len(meta)
    slots = torch.arange(k, device=meta.time.device)
    t_start = meta.side.get("t_start", meta.time)
    next_sim = meta.side.get("next_sim", meta.time.new_full((k,), float("nan"), dtype=torch.float32)).clone()
    order = stable_argsort(meta.position)  # [K] grouped by position, time order inside a position
    by_position = meta.position[order]
    same = by_position[1:] == by_position[:-1]  # [K-1] edge exists
    edges = torch.nonzero(same, as_tuple=True)[0]
    target = slots.clone()
    if count > 0 and edges.numel():
        token, later = order[edges], order[edges + 1]  # [E] each edge's token and its next at the same position
        sim = next_sim[token]  # [E] cos(token, later)
        stale = torch.nonzero(torch.isnan(sim), as_tuple=True)[0]
        if stale.numel():
            stale_token = token[stale]
            pairs = rows_at(torch.cat([stale_token, later[stale]]))  # [2S, D]
            fresh = cosine_rows(pairs[: stale.numel()], pairs[stale.numel() :])
            sim[stale] = fresh
            next_sim[stale_token] = fresh
        top = torch.topk(sim, min(count, edges.numel())).indices  # [C] chosen edges, as indices into edges
        chosen = edges[top]
        forward = torch.zeros(k, dtype=torch.bool, device=slots.device)
        forward[chosen] = True  # sorted slot j merges into slot j+1 when forward[j]
        tail = torch.flip(torch.cummin(torch.flip(torch.where(forward, k, slots), [0]), 0).values, [0])
        target[order] = order[tail]  # every run ends in its latest token
        before = chosen[chosen > 0] - 1
        next_sim[order[before[same[before]]]] = float("nan")  # their next token changed
        next_sim[later[top]] = float("nan")  # merged tokens' features changed
    src = torch.nonzero(target != slots, as_tuple=True)[0]
    dst, inverse = torch.unique(target[src], return_inverse=True)
    w = meta.size.to(torch.float32)
    ids = torch.cat([dst, src])
    both = rows_at(ids) * w[ids, None]  # [G + S, D]
    sums = both[: dst.numel()].index_add_(0, inverse, both[dst.numel() :])  # [G, D]
    sizes = w[dst].index_add(0, inverse, w[src])
    return MergePlan(target, t_start.scatter_reduce(0, target, t_start, "amin"), next_sim, dst,
                     sums / sizes.clamp_min(1e-12)[:, None], sizes)


def merge_temporal_neighbours(tokens: TokenSet, count: int) -> TokenSet:
    """Apply :func:`plan_merges` to a TokenSet: K -> K - min(count, #edges) tokens, time order kept."""
    rows = Rows((tokens.features,))
    plan = plan_merges(tokens, rows.at, count)
    merged = tokens.merge(plan.target)
    keep = plan.target == torch.arange(len(tokens), device=plan.target.device)
    return replace(merged, side={**merged.side, "t_start": plan.t_start[keep], "next_sim": plan.next_sim[keep]})
