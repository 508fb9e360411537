"""Fixtures shared by the whole suite: settings on a private data folder, real databases."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from vidmem.settings import Settings

PG_ADMIN_URL = os.environ.get("VIDMEM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
REDIS_URL = os.environ.get("VIDMEM_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{15 - _XDIST_WORKER}")
"""The machine's Redis, a database for each of pytest-xdist's workers (15, 14, ...): each flushes its own."""


def _reachable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def need_service(name: str, host: str, port: int) -> None:
    """Skip locally when a service is down; in CI that is a failure, not a skip."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def make_settings(folder: Path) -> Settings:
    """Embedded-mode settings on a private data folder, the tiny random model, small chunks."""
    return Settings(
        _env_file=None, data_dir=folder / "data", model="tiny-random", frame_size=64,
        chunk_seconds=2.0, sample_fps=2.0, memory_budget=256, llm_budget=64,
        stage1="uniform:ratio=0.5", stage2="uniform", max_new_tokens=4,
        # the suite's own servers listen on loopback and its clips are in pytest's temporary folders (module-scoped
        # services register clips of function-scoped tests): allowed explicitly, the defaults deny both
        allowed_networks=["127.0.0.0/8", "::1/128"], file_dir=folder.parent,
    )


@pytest.fixture(scope="session")
def settings_factory():  # type: ignore[no-untyped-def]
    return make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    from sqlalchemy import create_engine, text

    name = f"vidmem_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_client():  # type: ignore[no-untyped-def]
    """The machine's Redis, this worker's database (``REDIS_URL``), flushed before and after."""
    need_service("Redis", "127.0.0.1", 6379)
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def write_h264(path: Path, *, seconds: float = 6.0, fps: int = 10, size: int = 64, gop: int = 10) -> Path:
    """A clip with a red square moving left to right over a grey background."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"bf": "0", "preset": "ultrafast"}
        for i in range(int(seconds * fps)):
            frame = np.full((size, size, 3), 90, np.uint8)
            x = int(i / (seconds * fps) * (size - size // 4))
            frame[size // 3 : size // 3 + size // 4, x : x + size // 4] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def make_h264():  # type: ignore[no-untyped-def]
    """``make_h264(path, seconds=, fps=, size=, gop=)`` writes a real H.264 clip (PyAV, libx264)."""
    return write_h264
