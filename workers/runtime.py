"""What a worker (or the API, for enqueueing) needs at run time, built once from settings."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from store import db
from store.blobs import BlobStore, LocalBlobStore, RedisBlobStore
from store.memory_store import LocalMemoryStore, MemoryStore, RedisMemoryStore
from vidmem.settings import DEFAULT_MODEL, Settings

if TYPE_CHECKING:
    from compression.pipeline import Pipeline, PipelineCache, PipelineSpec
    from vlm.base import VideoLLM
    from workers.batching import EncodeBatcher

log = logging.getLogger(__name__)

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"


def resolve_model_name(name: str) -> str:
    """'vidmem-tiny' is the model shipped in the repository; other names pass through.

    A checkout without the trained folder falls back to the tiny random model, whose answers
    are then marked as coming from an untrained model.
    """
    shipped = REPO_MODELS / name
    if shipped.is_dir():
        return str(shipped)
    if name == DEFAULT_MODEL:
        log.warning("%s is not in this checkout (%s); using an untrained tiny-random model", name, shipped)
        return "tiny-random"
    return name


ROLES = ("api", "ingest", "worker")


class ChunkLosses:
    """Chunks that could not be stored after retries, per stream and reason (thread-safe).

    Ingest merges ``stats(stream_id)`` into the stream's stats, so every lost chunk shows as
    ``chunks_lost`` (in ``/metrics``) with its reasons in ``GET /streams/{id}``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}

    def record(self, stream_id: str, reason: str) -> None:
        with self._lock:
            self._counts.setdefault(stream_id, Counter())[reason] += 1

    def stats(self, stream_id: str) -> dict[str, Any]:
        with self._lock:
            reasons = dict(self._counts.get(stream_id, {}))
        return {"chunks_lost": sum(reasons.values()), "chunks_lost_reasons": reasons}


API_SQLITE_BUSY_S = 5.0  # an API request waits at most this long for SQLite's write lock, then 503


def pool_options(settings: Settings, role: str) -> dict[str, Any]:
    """Connection pool of one role's engine.

    The API's pool is small with a short wait, so a flood of requests is answered 503 quickly
    instead of queueing for minutes; ingest and the worker keep their own pools
    with SQLAlchemy's defaults, which API traffic can never exhaust.
    """
    if role == "api":
        return {
            "pool_size": settings.api_pool_size, "max_overflow": 0, "pool_timeout": settings.api_pool_timeout_s,
            "busy_timeout_s": API_SQLITE_BUSY_S,
        }
    return {}


@dataclass
class Runtime:
    """Settings plus lazily built engine, stores and model; ``role`` picks the connection pool."""

    settings: Settings
    auto_upgrade: bool = False
    role: str = "api"
    _model_lock: threading.Lock = field(default_factory=threading.Lock)
    _model: VideoLLM | None = None
    _siblings: dict[str, Runtime] = field(default_factory=dict, repr=False, compare=False)
    _siblings_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown runtime role {self.role!r}; one of {ROLES}")
        self._siblings.setdefault(self.role, self)

    def for_role(self, role: str) -> Runtime:
        """The runtime of ``role`` in this process: its own engine and pool, the same stores.

        ``vidmem serve`` runs the API and ingest in one process; ingest works on
        ``runtime.for_role("ingest")`` so that no API load can starve it of connections.
        """
        with self._siblings_lock:
            sibling = self._siblings.get(role)
            if sibling is None:
                self.engine  # noqa: B018 - migrate or check the schema once, before a second engine
                sibling = Runtime(self.settings, role=role, _siblings=self._siblings,
                                  _siblings_lock=self._siblings_lock)
                sibling.__dict__.update(redis=self.redis, memory_store=self.memory_store, blobs=self.blobs,
                                        chunk_losses=self.chunk_losses, pipelines=self.pipelines)
            return sibling

    @cached_property
    def engine(self):  # type: ignore[no-untyped-def]
        return db.prepare_database(
            self.settings.sqlalchemy_url, auto_upgrade=self.auto_upgrade, **pool_options(self.settings, self.role)
        )

    @cached_property
    def chunk_losses(self) -> ChunkLosses:
        return ChunkLosses()

    @cached_property
    def pipelines(self) -> PipelineCache:
        """Pipelines (both methods and their weights) built once per spec in this process."""
        from compression.pipeline import PipelineCache

        return PipelineCache()

    @property
    def pipeline_spec(self) -> PipelineSpec:
        from compression.pipeline import PipelineSpec

        s = self.settings
        return PipelineSpec(s.stage1, s.memory_budget, s.stage2, s.llm_budget)

    @property
    def pipeline(self) -> Pipeline:
        """The settings' two-stage pipeline, the same object for every chunk and question of this process."""
        return self.pipelines.get(self.pipeline_spec)

    @cached_property
    def encoder(self) -> EncodeBatcher:
        """Encodes chunks of the streams this process works on at once in shared forward passes."""
        from workers.batching import EncodeBatcher

        return EncodeBatcher(lambda: self.model, self.settings.encode_batch, self.settings.encode_wait_ms / 1e3)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return db.make_session_factory(self.engine)

    @cached_property
    def autocommit(self) -> Engine:
        """The engine's pool, each statement its own transaction on PostgreSQL (``db.autocommit``)."""
        return db.autocommit(self.engine)

    @cached_property
    def read_sessions(self) -> sessionmaker[Session]:
        """Sessions for reads outside a transaction (``db.make_read_session_factory``), on the same pool."""
        return db.make_session_factory(self.autocommit)

    @cached_property
    def redis(self):  # type: ignore[no-untyped-def]
        import redis

        url = self.settings.store_redis_url
        return redis.Redis.from_url(url) if url else None

    @cached_property
    def memory_store(self) -> MemoryStore:
        if self.redis is not None:
            return RedisMemoryStore(self.redis)
        return LocalMemoryStore(self.settings.data_dir / "memory")

    @cached_property
    def blobs(self) -> BlobStore:
        if self.redis is not None:
            return RedisBlobStore(self.redis, self.settings.blob_ttl_seconds)
        return LocalBlobStore(self.settings.data_dir / "blobs", self.settings.blob_ttl_seconds)

    @property
    def model(self) -> VideoLLM:
        """The Video LLM, loaded on first use (only workers need it)."""
        with self._model_lock:
            if self._model is None:
                from vlm.loader import load_model

                name = resolve_model_name(self.settings.model)
                log.info("loading model %s", self.settings.model)
                self._model = load_model(
                    name, device=self.settings.device, dtype=self.settings.dtype,
                    cache_dir=str(self.settings.data_dir / "models"),
                )
            return self._model
