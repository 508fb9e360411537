"""The bounded queue's drop policies."""

from __future__ import annotations

import threading

from ingest.entities import DropPolicy
from ingest.queueing import BoundedQueue


def test_bounded_queue_when_full_drop_oldest_returns_the_oldest():
    queue: BoundedQueue[int] = BoundedQueue(2, DropPolicy.DROP_OLDEST)
    assert [queue.put(i) for i in range(4)] == [None, None, 0, 1]
    assert [queue.get(0), queue.get(0), queue.get(0)] == [2, 3, None]


def test_bounded_queue_when_full_drop_newest_refuses_the_new_item():
    queue: BoundedQueue[int] = BoundedQueue(1, DropPolicy.DROP_NEWEST)
    assert [queue.put(1), queue.put(2)] == [None, 2] and queue.get(0) == 1


def test_bounded_queue_when_full_block_waits_for_room_or_stop():
    queue: BoundedQueue[int] = BoundedQueue(1, DropPolicy.BLOCK)
    queue.put(1)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert queue.put(2, stop) == 1, "after stop, a full blocking queue drops the oldest rather than hang"
    assert len(queue) == 1


def test_bounded_queue_when_closed_drains_then_returns_none():
    queue: BoundedQueue[int] = BoundedQueue(3, DropPolicy.BLOCK)
    queue.put(7)
    queue.close()
    assert queue.get(1) == 7 and queue.get(1) is None and queue.closed
