"""Where each stream's rolling memory lives between tasks.

A record holds the serialised Memory, the stage-1 state, a version and the last applied chunk
``seq``. ``save`` is compare-and-set on the version, so a chunk is applied exactly once and in
order whichever worker runs it: a writer that lost the race gets ``False`` and retries.

Nothing here is ever unpickled (DESIGN.md, "Trust boundaries"): a local record file is safetensors
(the two blobs as uint8 tensors, the integers in a JSON metadata string) and a Redis hash holds the
blobs and integers as fields, beside ``format``. Records of an older format (pickled files, hashes
without ``format``) are refused with MemoryFormatError, never migrated.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import safetensors.numpy

RECORD_FORMAT = 2  # 1 was a pickled MemoryRecord (local) or a hash without "format" holding torch.save state (Redis)
_CHANGED = ("memory format changed: the stored memory of stream {stream} was written by an older vidmem ({what}); "
            "it is refused, not unpickled or migrated. Delete it to start the stream's memory afresh")


class MemoryFormatError(ValueError):
    """A stored record this vidmem refuses to load: corrupt, unknown, or of an older format."""


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
    def delete(self, stream_id: str) -> None: ...


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
        return decode_record(path.read_bytes(), stream_id)

    def _size(self, stream_id: str) -> MemorySize | None:
        path = self.root / f"{stream_id}.size"
        if not path.exists() or not self._path(stream_id).exists():  # a sidecar without its record is stale
            return None
        try:
            return MemorySize(**{k: int(v) for k, v in json.loads(path.read_text()).items()})
        except (ValueError, TypeError, AttributeError) as exc:
            raise MemoryFormatError(f"size sidecar of stream {stream_id} is corrupt: {exc}") from None

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
            _write_atomic(self._path(stream_id), encode_record(record))
            _write_atomic(self.root / f"{stream_id}.size", json.dumps(size.__dict__).encode())
            return True

    def delete(self, stream_id: str) -> None:
        """Forget the stream's memory (its stream was deleted); the lock file goes last, outside the lock."""
        with self._locked(stream_id):
            for suffix in (".mem", ".size"):
                (self.root / f"{stream_id}{suffix}").unlink(missing_ok=True)
        (self.root / f"{stream_id}.lock").unlink(missing_ok=True)


def encode_record(record: MemoryRecord) -> bytes:
    """A record as one safetensors blob: ``memory`` and ``state`` as uint8 tensors, the integers as JSON."""
    head = {"kind": "MemoryRecord", "format": RECORD_FORMAT, "version": record.version,
            "last_seq": record.last_seq, "tokens": record.tokens}
    blobs = {"memory": np.frombuffer(record.memory, np.uint8), "state": np.frombuffer(record.state, np.uint8)}
    return safetensors.numpy.save(blobs, metadata={"vidmem": json.dumps(head)})


def decode_record(data: bytes, stream_id: str) -> MemoryRecord:
    """Read :func:`encode_record` bytes; raises MemoryFormatError for anything else, never unpickles."""
    try:
        blobs = safetensors.numpy.load(data)
        (n,) = struct.unpack_from("<Q", data)
        head = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["vidmem"])
    except Exception as exc:  # safetensors raises its own error types; any failure means unreadable bytes
        if data.startswith(b"\x80"):  # the PROTO opcode every pickle of protocol 2+ starts with
            raise MemoryFormatError(_CHANGED.format(stream=stream_id, what="a pickled record")) from None
        raise MemoryFormatError(f"stored memory of stream {stream_id} is corrupt or unknown: "
                                f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(head, dict) or head.get("kind") != "MemoryRecord" or head.get("format") != RECORD_FORMAT:
        raise MemoryFormatError(f"stored memory of stream {stream_id} has an unknown format: {str(head)[:200]}")
    ints_ok = all(type(head.get(k)) is int for k in ("version", "last_seq", "tokens"))
    if set(blobs) != {"memory", "state"} or not ints_ok:
        raise MemoryFormatError(f"stored memory of stream {stream_id} is malformed")
    return MemoryRecord(head["version"], head["last_seq"], blobs["memory"].tobytes(), blobs["state"].tobytes(),
                        head["tokens"])


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
        if raw.get(b"format") != str(RECORD_FORMAT).encode():
            if b"format" not in raw:
                raise MemoryFormatError(_CHANGED.format(stream=stream_id, what="a Redis hash without 'format'"))
            raise MemoryFormatError(f"stored memory of stream {stream_id} has an unknown format: {raw[b'format']!r}")
        try:
            return MemoryRecord(
                version=int(raw[b"version"]), last_seq=int(raw[b"last_seq"]), memory=raw[b"memory"],
                state=raw[b"state"], tokens=int(raw.get(b"tokens", 0)),
            )
        except (KeyError, ValueError) as exc:
            raise MemoryFormatError(f"stored memory of stream {stream_id} is malformed: {exc!r}") from None

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
                    "format": RECORD_FORMAT, "version": record.version, "last_seq": record.last_seq,
                    "memory": record.memory, "state": record.state, "tokens": record.tokens,
                })
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def delete(self, stream_id: str) -> None:
        """Forget the stream's memory (its stream was deleted)."""
        self.client.delete(self.prefix + stream_id)
