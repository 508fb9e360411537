"""Helpers of the ordering and recovery tests: real worker processes on PostgreSQL and Redis.

Workers are ``python -m vidmem worker`` children started together (not one after the other),
each with its own data folder (its own copy of the tiny random model) and one torch thread.
``served``/``served_client`` run ``vidmem serve`` in parts for end-to-end tests elsewhere too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch
from fastapi.testclient import TestClient
from kombu.simple import SimpleQueue

from api.main import create_app
from compression.memory import Memory
from store import repo
from store.blobs import pack_frames
from store.db import session_scope
from tests.api_keys import authorise
from tests.conftest import need_service
from vidmem.processes import WorkerProcess
from vidmem.settings import Settings
from workers import services
from workers.app import CHUNK_QUEUE, create_celery
from workers.dispatch import recover_unfinished
from workers.ingest_manager import IngestManager
from workers.runtime import Runtime

# Fast failure detection for tests: beats every 0.5 s, dead after 3 s, checked every second.
FAST_RECOVERY = {"heartbeat_s": 0.5, "worker_dead_after_s": 3.0, "recovery_check_s": 1.0, "torch_threads": 1}


@contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """A redis-server of the test's own (free loopback port, persistence off): its URL.

    Not the machine's shared database 15, whose queues other test sessions' workers may drain.
    """
    need_service("Redis", "127.0.0.1", 6379)  # where the machine has one, redis-server is installed too
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "redis.log", "ab") as log:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(folder)], stdout=log, stderr=log)
    try:
        client = redis.Redis(port=port, socket_timeout=5)
        wait_for(lambda: _pings(client), 10, 0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float = 120.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout:.0f} s")


def chunk_frames(seed: int, n: int, frames: int = 4, size: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` chunks of random frames and their time stamps, 2 s per chunk."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8),
             2.0 * seq + np.arange(frames, dtype=np.float64) * 2.0 / frames) for seq in range(n)]


def record_chunks(rt: Runtime, stream_id: str, chunks: list[tuple[np.ndarray, np.ndarray]], start: int = 0) -> None:
    """Store frames and rows of ``chunks`` as ingest does, without queueing anything."""
    with session_scope(rt.sessions) as session:
        for seq, (images, stamps) in enumerate(chunks, start):
            rt.blobs.put(f"{stream_id}-{seq}", pack_frames(images, stamps))
            repo.create_chunk(session, stream_id=stream_id, seq=seq, t_start=2.0 * seq, t_end=2.0 * seq + 2,
                              num_frames=int(images.shape[0]), blob_key=f"{stream_id}-{seq}")


def reference_memory(settings: Settings, chunks: list[tuple[np.ndarray, np.ndarray]]) -> Memory:
    """The memory one process builds from ``chunks`` applied in order (embedded stores)."""
    settings.ensure_dirs()
    rt = Runtime(settings, auto_upgrade=True)
    with session_scope(rt.sessions) as session:
        stream_id = repo.create_stream(session, name="reference", source_url="rtsp://127.0.0.1/ref").id
    record_chunks(rt, stream_id, chunks)
    assert [services.apply_chunk(rt, stream_id, seq) for seq in range(len(chunks))] == ["applied"] * len(chunks)
    return services.StreamMemory.load(rt, stream_id).memory


def assert_same_memory(got: Memory, want: Memory) -> None:
    assert (got.chunks_applied, got.tokens_seen, got.num_tokens) == (want.chunks_applied, want.tokens_seen,
                                                                       want.num_tokens)
    for name in ("time", "frame", "row", "col", "size"):
        assert torch.equal(getattr(got.tokens, name), getattr(want.tokens, name)), name
    assert torch.allclose(got.tokens.features, want.tokens.features, atol=1e-5), "features differ"


def start_workers(settings: Settings, folder: Path, n: int, extra_args: tuple[str, ...] = ()) -> list[
        subprocess.Popen[bytes]]:
    """``n`` ``vidmem worker`` processes, started at once; their logs are ``folder/w<i>.log``."""
    procs = []
    for i in range(n):
        env = {**os.environ, **settings.model_copy(update={"data_dir": folder / f"w{i}"}).to_env()}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vidmem", "worker", "--log-file", str(folder / f"w{i}.log"), *extra_args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    return procs


def wait_ready(folder: Path, procs: list[subprocess.Popen[bytes]], timeout: float = 120.0) -> None:
    def ready() -> bool:
        for i, proc in enumerate(procs):
            assert proc.poll() is None, f"worker {i} exited: {log_of(folder, i)[-2000:]}"
        return all("ready." in log_of(folder, i) for i in range(len(procs)))

    wait_for(ready, timeout)


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_of(folder: Path, i: int) -> str:
    path = folder / f"w{i}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def attempts_of(rt: Runtime, stream_id: str) -> dict[int, int]:
    with session_scope(rt.sessions) as session:
        return {c.seq: c.attempts for c in repo.list_chunks(session, stream_id=stream_id)}


def all_settled(rt: Runtime, stream_ids: list[str]) -> bool:
    with session_scope(rt.sessions) as session:
        return all(repo.chunk_counts(session, stream_id=s)["pending"] == 0 for s in stream_ids)


def queued_chunk_tasks(app: Any) -> list[list[Any]]:
    """Read (and remove) the chunk tasks waiting on the real broker: their args."""
    found = []
    with app.connection_for_read() as conn, SimpleQueue(conn, CHUNK_QUEUE) as queue:
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                return found
            found.append(list(message.decode()[0]))
            message.ack()



@contextmanager
def served(settings: Settings, *, worker: bool = True, recover: bool = True,
           poll_seconds: float = 0.1) -> Iterator[tuple[Runtime, WorkerProcess | None]]:
    """``vidmem serve`` less its HTTP server: the runtime, the ingest manager and (``worker``) one real
    ``vidmem worker`` process on every queue, which recovers unfinished work when restarted (``recover``).
    """
    settings.ensure_dirs()
    create_celery(settings)
    runtime = Runtime(settings, auto_upgrade=True)
    process = None
    if worker:
        process = WorkerProcess(settings, on_restart=(lambda: recover_unfinished(runtime)) if recover else None)
        process.start()
    manager = IngestManager(runtime, poll_seconds=poll_seconds)
    manager.start()
    try:
        yield runtime, process
    finally:
        manager.stop()
        if process is not None:
            process.stop()


@contextmanager
def served_client(settings: Settings, *, worker: bool = True) -> Iterator[tuple[TestClient, Runtime,
                                                                                   WorkerProcess | None]]:
    """``served`` with the API in this process: a client that sends a key of the default tenant."""
    with served(settings, worker=worker) as (runtime, process), TestClient(create_app(runtime)) as client:
        authorise(client, runtime)
        yield client, runtime, process
