"""Where each stream's rolling memory lives between tasks.

A record holds the serialised Memory, the stage-1 state, a version and the last applied chunk
``seq``. ``save`` is compare-and-set on the version, so a chunk is applied exactly once and in
order whichever worker runs it: a writer that lost the race gets ``False`` and retries.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class MemoryRecord:
    version: int
    last_seq: int
    memory: bytes
    state: bytes
    tokens: int = 0

    @property
    def nbytes(self) -> int:
        return len(self.memory)


@dataclass(frozen=True)
class MemorySize:
    """What the API shows of a memory, read without loading the memory itself."""

    version: int
    tokens: int
    nbytes: int


class MemoryStore(Protocol):
    def load(self, stream_id: str) -> MemoryRecord | None: ...
    def size(self, stream_id: str) -> MemorySize | None: ...
    def save(self, stream_id: str, record: MemoryRecord, *, expected_version: int) -> bool: ...


class LocalMemoryStore:
    """One file per stream plus a small sidecar with its size, both written atomically under a file lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, stream_id: str) -> Path:
        return self.root / f"{stream_id}.mem"

    @contextmanager
    def _locked(self, stream_id: str):  # type: ignore[no-untyped-def]
        with open(self.root / f"{stream_id}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self, stream_id: str) -> MemoryRecord | None:
        path = self._path(stream_id)
        if not path.exists():
            return None
        return pickle.loads(path.read_bytes())  # noqa: S301 - our own files

    def _size(self, stream_id: str) -> MemorySize | None:
        path = self.root / f"{stream_id}.size"
        return MemorySize(**json.loads(path.read_text())) if path.exists() else None

    def load(self, stream_id: str) -> MemoryRecord | None:
        with self._locked(stream_id):
            return self._read(stream_id)

    def size(self, stream_id: str) -> MemorySize | None:
        with self._locked(stream_id):
            return self._size(stream_id)

    def save(self, stream_id: str, record: MemoryRecord, *, expected_version: int) -> bool:
        with self._locked(stream_id):
            current = self._size(stream_id)  # the version check needs no unpickling
            if (current.version if current else 0) != expected_version:
                return False
            size = MemorySize(record.version, record.tokens, record.nbytes)
            _write_atomic(self._path(stream_id), pickle.dumps(record))
            _write_atomic(self.root / f"{stream_id}.size", json.dumps(size.__dict__).encode())
            return True


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RedisMemoryStore:
    """A hash per stream; WATCH/MULTI gives the compare-and-set."""

    def __init__(self, client, prefix: str = "vidmem:memory:") -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.prefix = prefix

    def load(self, stream_id: str) -> MemoryRecord | None:
        raw = self.client.hgetall(self.prefix + stream_id)
        if not raw:
            return None
        return MemoryRecord(
            version=int(raw[b"version"]), last_seq=int(raw[b"last_seq"]), memory=raw[b"memory"],
            state=raw[b"state"], tokens=int(raw.get(b"tokens", 0)),
        )

    def size(self, stream_id: str) -> MemorySize | None:
        key = self.prefix + stream_id
        with self.client.pipeline() as pipe:  # one round trip, without fetching the memory bytes
            (version, tokens), nbytes = pipe.hmget(key, "version", "tokens").hstrlen(key, "memory").execute()
        return None if version is None else MemorySize(int(version), int(tokens or 0), int(nbytes))

    def save(self, stream_id: str, record: MemoryRecord, *, expected_version: int) -> bool:
        import redis

        key = self.prefix + stream_id
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(key)
                current = pipe.hget(key, "version")
                if (int(current) if current is not None else 0) != expected_version:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(key, mapping={
                    "version": record.version, "last_seq": record.last_seq,
                    "memory": record.memory, "state": record.state, "tokens": record.tokens,
                })
                pipe.execute()
                return True
            except redis.WatchError:
                return False
