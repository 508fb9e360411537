"""Helpers for the ingest tests: run a StreamIngest to its end and collect what it delivered."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from ingest.entities import FINAL_STATUSES, Chunk, IngestConfig, StatusEvent, StreamStatus
from ingest.runner import StreamIngest


@dataclass
class Collector:
    """Records chunks and status events as callbacks deliver them (thread-safe enough for tests)."""

    chunks: list[Chunk] = field(default_factory=list)
    events: list[StatusEvent] = field(default_factory=list)
    chunk_delay_s: float = 0.0
    changed: threading.Event = field(default_factory=threading.Event)

    def on_chunk(self, chunk: Chunk) -> None:
        if self.chunk_delay_s:
            time.sleep(self.chunk_delay_s)
        self.chunks.append(chunk)
        self.changed.set()

    def on_status(self, event: StatusEvent) -> None:
        self.events.append(event)
        self.changed.set()

    @property
    def statuses(self) -> list[StreamStatus]:
        return [e.status for e in self.events]

    @property
    def final(self) -> StatusEvent | None:
        return self.events[-1] if self.events and self.events[-1].status in FINAL_STATUSES else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            self.changed.wait(0.05)
            self.changed.clear()
        return True


@pytest.fixture
def run_ingest():  # type: ignore[no-untyped-def]
    """``run_ingest(url, config, wait=True)`` -> (ingest, collector); stopped at teardown."""
    started: list[StreamIngest] = []

    def run(url: str, config: IngestConfig, *, wait: bool = True, timeout: float = 20.0,
            chunk_delay_s: float = 0.0, stream_id: str = "s1") -> tuple[StreamIngest, Collector]:
        collector = Collector(chunk_delay_s=chunk_delay_s)
        ingest = StreamIngest(stream_id, url, config, collector.on_chunk, collector.on_status)
        started.append(ingest)
        ingest.start()
        if wait:
            assert ingest.join(timeout), f"ingest of {url} did not finish within {timeout} s"
        return ingest, collector

    yield run
    for ingest in started:
        ingest.stop()
    for ingest in started:
        ingest.join(10)
