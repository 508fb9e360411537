"""The bounded chunk queue between the decode thread and the ``on_chunk`` callback."""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

from ingest.entities import DropPolicy

T = TypeVar("T")


class BoundedQueue(Generic[T]):
    """A FIFO of at most ``maxsize`` items that never grows: ``put`` applies the drop policy when full.

    ``close()`` wakes every waiter; ``get`` then returns what is left and finally None.
    """

    def __init__(self, maxsize: int, policy: DropPolicy) -> None:
        self.maxsize = maxsize
        self.policy = policy
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T, stop: threading.Event | None = None) -> T | None:
        """Queue ``item``; returns the item dropped to make room (or ``item`` itself), else None."""
        with self._cond:
            if self.policy is DropPolicy.BLOCK:
                while len(self._items) >= self.maxsize and not self._closed and not (stop and stop.is_set()):
                    self._cond.wait(0.1)
            dropped: T | None = None
            if len(self._items) >= self.maxsize:
                if self.policy is DropPolicy.DROP_NEWEST:
                    return item
                dropped = self._items.popleft()
            self._items.append(item)
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item; None when closed and empty, or after ``timeout`` seconds."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            item = self._items.popleft() if self._items else None
            self._cond.notify_all()
            return item

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
