"""Cross-stream encode batching inside one worker process.

Tasks of different streams that run at the same time in a worker (a threads pool) hand their
clips to one :class:`EncodeBatcher`; its thread encodes up to ``max_batch`` waiting clips in one
forward pass (:func:`vlm.batch.encode_many`) and hands each task its own block. It waits for more
clips at most ``wait_s``, and only while some task has said it is on its way (``expecting``; a
chunk task is, from its claim on: ``workers.tasks.apply_claimed``): a worker that runs one task at
a time never waits. Per-stream order is untouched: each task
still applies its own chunk to its own stream; only the encoder's forward pass is shared.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compression.tokens import TokenBlock

if TYPE_CHECKING:
    from vlm.base import VideoLLM
    from vlm.batch import Clip

log = logging.getLogger(__name__)

POLL_S = 0.002  # how often a waiting batch looks again for tasks on their way


@dataclass(frozen=True)
class Encoded:
    """One clip's block and the figures of the forward pass it shared."""

    block: TokenBlock
    batch: int  # clips in that forward pass
    encode_ms: float  # its wall time (shared by the batch)


def _encode_many(model: VideoLLM, clips: Sequence[Clip]) -> list[TokenBlock]:
    from vlm.batch import encode_many

    return encode_many(model, clips)


class EncodeBatcher:
    """Batches concurrent encodes of one process into shared forward passes (thread-safe)."""

    def __init__(self, model_of: Callable[[], VideoLLM], max_batch: int, wait_s: float,
                 encode: Callable[[VideoLLM, Sequence[Clip]], list[TokenBlock]] = _encode_many) -> None:
        self._model_of, self._encode = model_of, encode
        self.max_batch, self.wait_s = max(1, max_batch), max(0.0, wait_s)
        self._queue: queue.Queue[tuple[Clip, Future[Encoded]]] = queue.Queue()
        self._lock = threading.Lock()
        self._on_the_way: dict[int, int] = {}  # thread id -> nesting depth of ``expecting``
        self._thread: threading.Thread | None = None
        self._pending = 0  # clips submitted whose forward pass has not finished
        self.batches: deque[int] = deque(maxlen=1000)  # sizes of the latest forward passes

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Mark this thread as about to encode, so that a batch being collected waits for it (bounded)."""
        ident = threading.get_ident()
        with self._lock:
            self._on_the_way[ident] = self._on_the_way.get(ident, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                depth = self._on_the_way.pop(ident, 0) - 1
                if depth > 0:
                    self._on_the_way[ident] = depth

    @property
    def pending(self) -> int:
        """Clips handed to the batcher whose forward pass has not finished (waiting or running)."""
        with self._lock:
            return self._pending

    def encode(self, clips: Sequence[Clip]) -> list[Encoded]:
        """Encode ``clips`` (one per stream), batched with whatever other threads are encoding now."""
        if self.max_batch == 1 and len(clips) <= 1:
            return [self._run(list(clips))[0]] if clips else []
        futures: list[Future[Encoded]] = []
        for clip in clips:
            future: Future[Encoded] = Future()
            self._queue.put((clip, future))
            futures.append(future)
        with self._lock:
            self._on_the_way.pop(threading.get_ident(), None)  # submitted: no batch waits for this thread now
            self._pending += len(futures)
            self._start()
        try:
            return [f.result() for f in futures]
        finally:
            with self._lock:
                self._pending -= len(futures)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="encode-batcher", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            try:
                done = self._run([clip for clip, _ in batch])
            except Exception:  # noqa: BLE001 - one bad clip must fail only its own task
                log.warning("batched encode of %d clips failed; encoding them one by one", len(batch), exc_info=True)
                for clip, future in batch:
                    try:
                        future.set_result(self._run([clip])[0])
                    except Exception as exc:  # noqa: BLE001 - handed to the task that submitted the clip
                        future.set_exception(exc)
                continue
            for (_, future), encoded in zip(batch, done, strict=True):
                future.set_result(encoded)

    def _collect(self) -> list[tuple[Clip, Future[Encoded]]]:
        """The first waiting clip, then more until the batch is full, nobody is on the way, or time is up."""
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            with self._lock:
                expected = bool(self._on_the_way)
            if not expected or remaining <= 0:
                # a thread puts its clip before it stops being expected: take what it put in between
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                break
            try:
                batch.append(self._queue.get(timeout=min(remaining, POLL_S)))
            except queue.Empty:
                continue
        return batch

    def _run(self, clips: list[Clip]) -> list[Encoded]:
        model = self._model_of()  # loaded before the clock starts: loading is not encoding
        start = time.perf_counter()
        blocks = self._encode(model, clips)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        self.batches.append(len(clips))
        return [Encoded(block, len(clips), elapsed_ms) for block in blocks]
