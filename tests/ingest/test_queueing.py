"""The bounded queue's drop policies."""

from __future__ import annotations

import threading
import time

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
    # given a full blocking queue
    queue: BoundedQueue[int] = BoundedQueue(1, DropPolicy.BLOCK)
    queue.put(1)
    # when a consumer takes the item 0.2 s later, then the put waited for that room and dropped nothing
    taken: list[int | None] = []
    threading.Timer(0.2, lambda: taken.append(queue.get(0))).start()
    t0 = time.monotonic()
    assert queue.put(2) is None and time.monotonic() - t0 >= 0.15, "put must wait for room"
    assert taken == [1] and queue.get(0) == 2
    # when the queue is full and stop is set 0.2 s later, then the put waited, then dropped the oldest
    queue.put(3)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    assert queue.put(4, stop) == 3, "after stop, a full blocking queue drops the oldest rather than hang"
    assert time.monotonic() - t0 >= 0.15 and len(queue) == 1


def test_bounded_queue_when_closed_drains_then_returns_none():
    queue: BoundedQueue[int] = BoundedQueue(3, DropPolicy.BLOCK)
    queue.put(7)
    queue.close()
    assert queue.get(1) == 7 and queue.get(1) is None and queue.closed
