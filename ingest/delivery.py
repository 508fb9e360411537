"""Hand chunks and status events to the caller's callbacks without ever blocking decoding.

Chunks cross from the decode side to a delivery thread through a ``BoundedQueue`` with a named
drop policy, so a slow ``on_chunk`` costs dropped (and counted) chunks, not memory. Status events
are reported at once from the caller's thread, except the final one (ended, failed, stopped), which
the delivery thread sends after the last chunk, so a caller that sees it has seen every chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ingest.entities import Chunk, DropPolicy, Gap, StatusEvent, StreamStatus
from ingest.queueing import BoundedQueue
from ingest.stats import StatsBox

log = logging.getLogger(__name__)

ChunkCallback = Callable[[Chunk], None]
StatusCallback = Callable[[StatusEvent], None]
GET_TIMEOUT_S = 0.2


class Delivery:
    def __init__(
        self, stream_id: str, on_chunk: ChunkCallback, on_status: StatusCallback, stats: StatsBox,
        queue_chunks: int, policy: DropPolicy = DropPolicy.DROP_OLDEST,
    ) -> None:
        self.stream_id = stream_id
        self.on_chunk, self.on_status = on_chunk, on_status
        self.stats = stats
        self.queue: BoundedQueue[Chunk] = BoundedQueue(queue_chunks, policy)
        self._final: StatusEvent | None = None
        self._seq = 0
        self._thread = threading.Thread(target=self._main, name=f"deliver-{stream_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def event(self, status: StreamStatus, reason: str | None, gap: Gap | None = None) -> StatusEvent:
        """A status event, also recorded in the stats (not yet reported)."""
        self.stats.set(status=status, reason=reason)
        return StatusEvent(self.stream_id, status, reason, time.time(), gap)

    def report(self, status: StreamStatus, reason: str | None, gap: Gap | None = None) -> None:
        """Report a non-final status now, from the calling thread."""
        log.info("stream %s: %s (%s)", self.stream_id, status, reason)
        self._call(self.on_status, self.event(status, reason, gap))

    def enqueue(self, chunk: Chunk, stop: threading.Event | None = None) -> None:
        dropped = self.queue.put(chunk, stop)
        if dropped is not None:
            self.stats.add(chunks_dropped=1, frames_dropped=len(dropped.frames))
            log.warning("stream %s: delivery behind, dropped a chunk of %d frames", self.stream_id, len(dropped.frames))

    def finish(self, final: StatusEvent) -> None:
        """No more chunks: deliver what is queued, then ``final``; the thread then ends."""
        self._final = final
        self.queue.close()

    def _main(self) -> None:
        while True:
            chunk = self.queue.get(GET_TIMEOUT_S)
            if chunk is not None:
                self._deliver(chunk)
            elif self.queue.closed and len(self.queue) == 0:
                break
        final = self._final or self.event(StreamStatus.FAILED, "internal error: no final status")
        log.info("stream %s: %s (%s)", self.stream_id, final.status, final.reason)
        self._call(self.on_status, final)

    def _deliver(self, chunk: Chunk) -> None:
        chunk = replace(chunk, seq=self._seq)  # contiguous even when the queue dropped chunks
        self._seq += 1
        newest = chunk.frames[-1].wall_time if chunk.frames else time.time()
        self.stats.set(lag_seconds=max(0.0, time.time() - newest))
        if self._call(self.on_chunk, chunk):
            self.stats.add(chunks_emitted=1)

    def _call(self, callback: Callable[[Any], None], arg: Any) -> bool:
        try:
            callback(arg)
        except Exception:
            self.stats.add(callback_errors=1)
            log.exception("stream %s: callback %s failed", self.stream_id, getattr(callback, "__name__", callback))
            return False
        return True
