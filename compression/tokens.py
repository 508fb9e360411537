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

import safetensors.torch
import torch
from torch import Tensor

FORMAT_VERSION = 2  # of every stored memory blob; 1 was pickle/torch.save (records) with a hand-made layout inside
_FIELDS = ("features", "time", "frame", "row", "col", "size")
_FIELD_FLOAT = {"time": True, "frame": False, "row": False, "col": False, "size": True}  # else integer
_LEGACY = ((b"\x80", "a Python pickle"), (b"PK\x03\x04", "a torch.save archive"),
           (b"VMTS1", "a version-1 TokenSet"), (b"VMMEM1", "a version-1 Memory"))


class StoredFormatError(ValueError):
    """Stored bytes this vidmem refuses to load: corrupt, of another kind, or in an older format.

    Nothing stored is ever unpickled, so a compromised store can at worst make a load fail with this error.
    """


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
        """Serialise (safetensors): fp16 features, exact everything else. Round-trips exactly once features are fp16."""
        return self._bytes

    @cached_property
    def _bytes(self) -> bytes:
        tensors, meta = self.to_parts()
        return pack_tensors("TokenSet", tensors, meta)

    def to_parts(self, prefix: str = "") -> tuple[dict[str, Tensor], dict]:
        """The set as named tensors (fp16 features) plus JSON metadata, for :func:`pack_tensors`."""
        tensors = {prefix + name: getattr(self, name) for name in _FIELDS}
        tensors[prefix + "features"] = self.features.to(torch.float16)
        tensors.update({f"{prefix}side.{k}": v for k, v in self.side.items()})
        return tensors, {"grid": list(self.grid), "dim": self.dim}

    @property
    def nbytes(self) -> int:
        """Length of the serialised bytes."""
        return len(self._bytes)

    @staticmethod
    def from_bytes(data: bytes) -> TokenSet:
        """Read :meth:`to_bytes`; raises StoredFormatError (a ValueError) on anything else."""
        tensors, meta = unpack_tensors(data, "TokenSet")
        return TokenSet.from_parts(tensors, meta)

    @staticmethod
    def from_parts(tensors: dict[str, Tensor], meta: dict, prefix: str = "") -> TokenSet:
        """Rebuild from :meth:`to_parts`, checking names, dtypes and shapes, so later code never meets a
        malformed set."""
        missing = [name for name in _FIELDS if prefix + name not in tensors]
        grid = meta.get("grid") if isinstance(meta, dict) else None
        if missing or not _is_grid(grid):
            raise StoredFormatError(f"stored TokenSet is malformed: missing {missing or 'a valid grid'}")
        fields = {name: tensors[prefix + name] for name in _FIELDS}
        side = {k.removeprefix(prefix + "side."): v for k, v in tensors.items() if k.startswith(prefix + "side.")}
        _check_shapes(fields, side)
        return TokenSet(*fields.values(), side=side, grid=(grid[0], grid[1]))

def pack_tensors(kind: str, tensors: dict[str, Tensor], meta: dict) -> bytes:
    """Named tensors in safetensors, with ``{"kind", "format", "meta"}`` as a JSON string in its metadata.

    Tensors that share storage (e.g. a side field that is the time tensor itself) are copied apart,
    as safetensors requires.
    """
    seen: set[int] = set()
    flat = {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(ptr)
        flat[name] = t
    head = json.dumps({"kind": kind, "format": FORMAT_VERSION, "meta": meta}, separators=(",", ":"))
    return safetensors.torch.save(flat, metadata={"vidmem": head})


def unpack_tensors(data: bytes, kind: str) -> tuple[dict[str, Tensor], dict]:
    """Read :func:`pack_tensors` bytes of ``kind``: (tensors on the CPU, meta). Never unpickles.

    Raises StoredFormatError naming what is wrong: an older format (pickle, torch.save, version 1),
    another kind, another format version, or bytes that are not valid safetensors.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StoredFormatError(f"not a serialised {kind}: got {type(data).__name__}, not bytes")
    data = bytes(data)
    try:
        tensors = safetensors.torch.load(data)
        (n,) = struct.unpack_from("<Q", data)
        head = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["vidmem"])
    except Exception as exc:  # safetensors raises its own error types; any failure means unreadable bytes
        raise StoredFormatError(_unreadable(data, kind, exc)) from None
    if not isinstance(head, dict) or head.get("kind") != kind or not isinstance(head.get("meta"), dict):
        found = head.get("kind") if isinstance(head, dict) else None
        raise StoredFormatError(f"not a serialised {kind}: the stored blob is a {found!r}")
    if head.get("format") != FORMAT_VERSION:
        raise StoredFormatError(f"memory format changed: this {kind} is in format {head.get('format')!r}, "
                                f"this vidmem reads format {FORMAT_VERSION}")
    return {k: v.clone() for k, v in tensors.items()}, head["meta"]  # clone: writable, not views of ``data``


def legacy_format(data: bytes) -> str | None:
    """What older vidmem format ``data`` looks like (pickle, torch.save, version 1), or None."""
    return next((what for magic, what in _LEGACY if data.startswith(magic)), None)


def _unreadable(data: bytes, kind: str, exc: Exception) -> str:
    legacy = legacy_format(data)
    if legacy:
        return (f"memory format changed: this {kind} is {legacy} written by an older vidmem; it is refused, not "
                f"unpickled or migrated. Delete the stream's stored memory to start it afresh")
    return f"not a serialised {kind}: corrupt or unknown data ({type(exc).__name__}: {str(exc)[:200]})"


def _is_grid(grid: object) -> bool:
    return isinstance(grid, list) and len(grid) == 2 and all(type(g) is int and g > 0 for g in grid)


def _check_shapes(fields: dict[str, Tensor], side: dict[str, Tensor]) -> None:
    """Every per-token field holds K rows with the dtype the methods expect; features are [K, D] floats."""
    features = fields["features"]
    if features.dim() != 2 or not features.is_floating_point():
        raise StoredFormatError(f"stored TokenSet is malformed: features {features.dtype} {list(features.shape)}")
    k = features.shape[0]
    for name, floating in _FIELD_FLOAT.items():
        t = fields[name]
        kind_ok = t.is_floating_point() if floating else not t.is_floating_point() and t.dtype != torch.bool
        if not kind_ok or tuple(t.shape) != (k,):
            raise StoredFormatError(f"stored TokenSet is malformed: {name} {t.dtype} {list(t.shape)}, "
                                    f"expected {'floats' if floating else 'integers'} [{k}]")
    for name, t in side.items():
        if t.dim() == 0 or t.shape[0] != k:
            raise StoredFormatError(f"stored TokenSet is malformed: side field {name!r} has shape {list(t.shape)}")
