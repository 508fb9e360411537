"""What a worker (or the API, for enqueueing) needs at run time, built once from settings."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from store import db
from store.blobs import BlobStore, LocalBlobStore, RedisBlobStore
from store.memory_store import LocalMemoryStore, MemoryStore, RedisMemoryStore
from vidmem.settings import DEFAULT_MODEL, Settings

if TYPE_CHECKING:
    from vlm.base import VideoLLM

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


@dataclass
class Runtime:
    settings: Settings
    auto_upgrade: bool = False
    _model_lock: threading.Lock = field(default_factory=threading.Lock)
    _model: VideoLLM | None = None

    @cached_property
    def engine(self):  # type: ignore[no-untyped-def]
        return db.prepare_database(self.settings.sqlalchemy_url, auto_upgrade=self.auto_upgrade)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return db.make_session_factory(self.engine)

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
