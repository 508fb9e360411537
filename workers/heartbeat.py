"""A worker's two background threads: its heartbeat, and the recovery check every worker runs.

The heartbeat row (``workers``) is written before the worker takes its first task and every
``heartbeat_s`` after; a clean stop deletes it, so a stopped worker counts as gone at once while
a killed one counts as dead ``worker_dead_after_s`` after its last beat. The recovery check
(``chain.recover_lost_work``) runs every ``recovery_check_s`` in every worker, so lost work comes
back without ``vidmem serve`` and without a scheduler: within dead_after + check + heartbeat
seconds (35 s with the defaults).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence

from store import repo
from store.db import session_scope
from workers import chain
from workers.runtime import Runtime

log = logging.getLogger(__name__)


class Heartbeat:
    """Beats for this process's worker id and runs the recovery check until ``stop``."""

    def __init__(self, rt: Runtime, queues: Sequence[str]) -> None:
        self.rt = rt
        self.queues = ",".join(queues)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def beat(self) -> None:
        with session_scope(self.rt.sessions) as session:
            repo.beat_worker(session, worker_id=chain.worker_id(), hostname=socket.gethostname(), pid=os.getpid(),
                             queues=self.queues)

    def start(self) -> None:
        """First beat now (the worker is live before it takes a task), then the two threads."""
        self.beat()
        settings = self.rt.settings
        for name, period, step in (("heartbeat", settings.heartbeat_s, self.beat),
                                   ("recovery", settings.recovery_check_s, self._recover)):
            thread = threading.Thread(target=self._every, args=(period, step), name=f"vidmem-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("worker %s beating every %.1f s; recovery check every %.1f s", chain.worker_id(),
                 settings.heartbeat_s, settings.recovery_check_s)

    def _recover(self) -> None:
        chain.recover_lost_work(self.rt)

    def _every(self, period: float, step) -> None:  # type: ignore[no-untyped-def]
        while not self._stop.wait(period):
            try:
                step()
            except Exception:  # a database or broker away for a while: the next round tries again
                log.warning("%s failed; trying again in %.1f s", threading.current_thread().name, period,
                            exc_info=True)

    def stop(self) -> None:
        """Stop both threads and delete the heartbeat row: a cleanly stopped worker holds nothing."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        try:
            with session_scope(self.rt.sessions) as session:
                repo.forget_workers(session, worker_ids=[chain.worker_id()])
        except Exception:
            log.warning("heartbeat row of worker %s not deleted; it ages out", chain.worker_id(), exc_info=True)
