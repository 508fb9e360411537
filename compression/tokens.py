"""Token containers: a chunk's encoder output (TokenBlock) and any subset or merge of tokens (TokenSet).

Every compression method computes an index plan once and applies it to every per-token field
through :meth:`TokenSet.gather` or :meth:`TokenSet.merge`, so fields can never drift apart.
Dimension letters: F frames, N tokens per frame, K tokens in a set, D feature width.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

MAGIC = b"VMTS1"
_FIELDS = ("features", "time", "frame", "row", "col", "size")
_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64, "int64": torch.int64,
           "int32": torch.int32, "bool": torch.bool, "bfloat16": torch.bfloat16, "uint8": torch.uint8}


@dataclass(frozen=True)
class TokenBlock:
    """One chunk's encoder output.

    features: [F, N, D]; timestamps: [F] float64 seconds of stream media time; grid: (rows, cols)
    with rows * cols == N; frame_offset: stream-wide index of frame 0; side: extras shaped [F, N, ...]
    (e.g. "motion" [F, N] float).
    """

    features: Tensor
    timestamps: Tensor
    grid: tuple[int, int]
    frame_offset: int = 0
    side: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f, n = self.features.shape[:2]
        if self.grid[0] * self.grid[1] != n:
            raise ValueError(f"grid {self.grid} does not hold {n} tokens per frame")
        if self.timestamps.shape[0] != f:
            raise ValueError(f"{self.timestamps.shape[0]} timestamps for {f} frames")

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])

    def to_tokenset(self) -> TokenSet:
        """All F*N tokens, frame-major then row-major: features [F*N, D]; every field on the features' device."""
        f, n, d = self.features.shape
        rows, cols = self.grid
        device = self.features.device
        pos = torch.arange(n, device=device)
        return TokenSet(
            features=self.features.reshape(f * n, d),
            time=self.timestamps.to(device, torch.float64).repeat_interleave(n),
            frame=(torch.arange(f, dtype=torch.int64, device=device) + self.frame_offset).repeat_interleave(n),
            row=(pos // cols).repeat(f),
            col=(pos % cols).repeat(f),
            size=torch.ones(f * n, dtype=torch.float32, device=device),
            side={k: v.to(device).reshape(f * n, *v.shape[2:]) for k, v in self.side.items()},
            grid=self.grid,
        )


@dataclass(frozen=True, eq=False)
class TokenSet:
    """Any subset or merge of tokens, in time order.

    features [K, D]; time [K] float64; frame [K] int64 (stream-wide); row, col [K] int64;
    size [K] float32 (original tokens represented); side: each [K, ...]; grid (rows, cols).
    """

    features: Tensor
    time: Tensor
    frame: Tensor
    row: Tensor
    col: Tensor
    size: Tensor
    side: dict[str, Tensor] = field(default_factory=dict)
    grid: tuple[int, int] = (1, 1)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @cached_property
    def position(self) -> Tensor:
        """Spatial index row * cols + col: [K] int64."""
        return self.row * self.grid[1] + self.col

    @staticmethod
    def empty(dim: int, grid: tuple[int, int] = (1, 1), dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> TokenSet:
        """A set with no tokens: features [0, dim]."""
        z = torch.zeros(0, dtype=torch.int64, device=device)
        return TokenSet(torch.zeros(0, dim, dtype=dtype, device=device), z.to(torch.float64), z, z.clone(),
                        z.clone(), z.to(torch.float32), {}, (int(grid[0]), int(grid[1])))

    def gather(self, idx: Tensor) -> TokenSet:
        """Apply one index plan idx: LongTensor [K'] to every field."""
        idx = idx.to(torch.int64)
        return TokenSet(self.features[idx], self.time[idx], self.frame[idx], self.row[idx], self.col[idx],
                        self.size[idx], {k: v[idx] for k, v in self.side.items()}, self.grid)

    def merge(self, target: Tensor) -> TokenSet:
        """Merge every token i into token target[i] ([K] int64; target[i] == i for representatives).

        A merged token takes the size-weighted mean of its group's features, the sum of sizes and
        keeps the representative's time/frame/row/col/side. Representatives keep their order.
        Targets must be representatives (target[target] == target).
        """
        target = target.to(torch.int64)
        slots = torch.arange(len(self), device=target.device)
        moved = target != slots
        if not bool(moved.any()):
            return self
        if not bool((target[target] == target).all()):
            raise ValueError("merge targets must be representatives (target[target] == target)")
        src = torch.nonzero(moved, as_tuple=True)[0]  # only merged groups are recomputed: O(merges * D)
        dst, inverse = torch.unique(target[src], return_inverse=True)
        w = self.size.to(torch.float32)
        sums = self.features[dst].to(torch.float32) * w[dst, None]  # [G, D]
        sums.index_add_(0, inverse, self.features[src].to(torch.float32) * w[src, None])
        sizes = w[dst].index_add(0, inverse, w[src])  # [G]
        keep = ~moved
        kept = self.gather(torch.nonzero(keep, as_tuple=True)[0])
        slot = torch.cumsum(keep.to(torch.int64), 0)[dst] - 1  # where each group's representative landed
        kept.features[slot] = (sums / sizes.clamp_min(1e-12)[:, None]).to(self.features.dtype)
        kept.size[slot] = sizes
        return kept

    @staticmethod
    def concat(sets: list[TokenSet]) -> TokenSet:
        """Concatenate in the given order; empty sets are skipped, side keys are those all sets share."""
        full = [s for s in sets if len(s) > 0]
        if not full:
            return sets[0] if sets else TokenSet.empty(1)
        if len(full) == 1:
            return full[0]
        keys = set.intersection(*(set(s.side) for s in full))
        cat = torch.cat
        return TokenSet(
            cat([s.features for s in full]), cat([s.time for s in full]), cat([s.frame for s in full]),
            cat([s.row for s in full]), cat([s.col for s in full]), cat([s.size for s in full]),
            {k: cat([s.side[k] for s in full]) for k in sorted(keys)}, full[-1].grid,
        )

    def frames(self) -> Tensor:
        """Unique stream-wide frame ids, ascending: LongTensor [F']."""
        return torch.unique(self.frame)

    def to(self, device: str | torch.device) -> TokenSet:
        return TokenSet(self.features.to(device), self.time.to(device), self.frame.to(device),
                        self.row.to(device), self.col.to(device), self.size.to(device),
                        {k: v.to(device) for k, v in self.side.items()}, self.grid)

    def half(self) -> TokenSet:
        """The same set with fp16 features (what serialisation stores)."""
        return replace(self, features=self.features.to(torch.float16))

    def to_bytes(self) -> bytes:
        """Serialise: fp16 features, exact everything else. Round-trips exactly once features are fp16."""
        return self._bytes

    @cached_property
    def _bytes(self) -> bytes:
        tensors = {name: getattr(self, name) for name in _FIELDS}
        tensors["features"] = self.features.to(torch.float16)
        tensors.update({f"side.{k}": v for k, v in self.side.items()})
        header, chunks = {"grid": list(self.grid), "dim": self.dim, "tensors": []}, []
        for name, t in tensors.items():
            t = t.detach().cpu().contiguous()
            raw = t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
            header["tensors"].append([name, str(t.dtype).removeprefix("torch."), list(t.shape), len(raw)])
            chunks.append(raw)
        return pack_header(MAGIC, header) + b"".join(chunks)

    @property
    def nbytes(self) -> int:
        """Length of the serialised bytes."""
        return len(self._bytes)

    @staticmethod
    def from_bytes(data: bytes) -> TokenSet:
        header, offset = unpack_header(data, MAGIC, "TokenSet")
        out = {}
        for name, dtype, shape, length in header["tensors"]:
            out[name] = _tensor(data[offset : offset + length], _DTYPES[dtype], shape)
            offset += length
        side = {k.removeprefix("side."): v for k, v in out.items() if k.startswith("side.")}
        return TokenSet(*(out[name] for name in _FIELDS), side=side, grid=tuple(header["grid"]))


def pack_header(magic: bytes, header: dict) -> bytes:
    """``magic``, the length of the JSON header (uint32, little endian), then the header itself."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return magic + struct.pack("<I", len(head)) + head


def unpack_header(data: bytes, magic: bytes, what: str) -> tuple[dict, int]:
    """The header written by :func:`pack_header` and the offset where the body starts."""
    if data[: len(magic)] != magic:
        raise ValueError(f"not a serialised {what}")
    (n,) = struct.unpack_from("<I", data, len(magic))
    start = len(magic) + 4
    return json.loads(data[start : start + n]), start + n


def _tensor(raw: bytes, dtype: torch.dtype, shape: list[int]) -> Tensor:
    if not raw:
        return torch.zeros(shape, dtype=dtype, device="cpu")
    if dtype == torch.bfloat16:
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(np.frombuffer(raw, dtype=str(dtype).removeprefix("torch.")).copy()).reshape(shape)
