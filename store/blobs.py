"""Frame blobs: chunk frames travel by key, never inside task messages.

Local (embedded mode): one file per key under a folder, expired by age. Redis (distributed):
``SET key value EX ttl``.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def delete(self, key: str) -> None: ...
    def entries(self) -> Iterator[tuple[str, float]]: ...
    def sweep(self) -> int: ...


class LocalBlobStore:
    """Blobs as files; ``sweep()`` removes those older than the time-to-live."""

    def __init__(self, root: Path, ttl_seconds: int) -> None:
        self.root = root
        self.ttl_seconds = ttl_seconds
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key.replace("/", "_")

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers never see a half-written blob

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        if not path.exists() or time.time() - path.stat().st_mtime > self.ttl_seconds:
            return None
        return path.read_bytes()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def entries(self) -> Iterator[tuple[str, float]]:
        """(key, age in seconds) of every blob, half-written ``.tmp`` files included (their key ends so)."""
        now = time.time()
        for path in self.root.iterdir():
            try:
                yield path.name, now - path.stat().st_mtime
            except FileNotFoundError:  # deleted meanwhile by a worker
                continue

    def sweep(self) -> int:
        """Remove blobs older than the time-to-live; ``get`` already treats them as gone."""
        expired = [key for key, age in self.entries() if age > self.ttl_seconds]
        for key in expired:
            self.delete(key)
        return len(expired)


class RedisBlobStore:
    def __init__(self, client, ttl_seconds: int, prefix: str = "vidmem:blob:") -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.ttl_seconds = ttl_seconds
        self.prefix = prefix

    def put(self, key: str, data: bytes) -> None:
        self.client.set(self.prefix + key, data, ex=self.ttl_seconds)

    def get(self, key: str) -> bytes | None:
        return self.client.get(self.prefix + key)

    def delete(self, key: str) -> None:
        self.client.delete(self.prefix + key)

    def entries(self) -> Iterator[tuple[str, float]]:
        """(key, age in seconds) of every blob; the age is what its time-to-live has used up."""
        for name in self.client.scan_iter(match=self.prefix + "*", count=500):
            ttl = self.client.ttl(name)
            if ttl == -2:  # expired or deleted meanwhile
                continue
            age = float(self.ttl_seconds - ttl) if ttl >= 0 else float("inf")  # -1: no expiry, set by hand
            yield name.decode().removeprefix(self.prefix), age

    def sweep(self) -> int:
        """Redis expires blobs by itself (``SET ... EX``)."""
        return 0


def pack_frames(images: np.ndarray, timestamps: np.ndarray, motion: np.ndarray | None = None) -> bytes:
    """images uint8 [F, H, W, 3], timestamps float64 [F] seconds, motion float32 [F, h, w] or None."""
    buffer = io.BytesIO()
    arrays = {"images": images, "timestamps": timestamps}
    if motion is not None:
        arrays["motion"] = motion
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_frames(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    with np.load(io.BytesIO(data)) as npz:
        motion = npz["motion"] if "motion" in npz.files else None
        return npz["images"], npz["timestamps"], motion
