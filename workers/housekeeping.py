"""Housekeeping of the ingest process: orphaned frame blobs and old chunk rows.

The ingest manager runs it every ``housekeeping_s`` (one owner: the process that writes the
blobs and rows). It removes

- frame blobs past their time-to-live (the local store keeps them as files until swept);
- orphaned frame blobs: those of no pending chunk (a chunk lost, failed or dropped before its
  blob was deleted, a worker killed after applying), once older than a grace period that covers
  a chunk whose row is still being written;
- finished chunk rows older than ``chunk_retention_s`` (``store.repo.prune_chunks``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from store import repo
from store.db import session_scope
from store.models import utcnow
from workers.alert_schedule import THUMBNAIL_PREFIX
from workers.runtime import Runtime

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 60.0  # on top of submit_retry_s: a blob is written before its row


@dataclass(frozen=True)
class Swept:
    expired_blobs: int
    orphaned_blobs: int
    pruned_chunks: int


def sweep_blobs(rt: Runtime, *, grace_s: float | None = None) -> tuple[int, int]:
    """Delete expired blobs and blobs of no pending chunk older than ``grace_s``; (expired, orphaned)."""
    grace = rt.settings.submit_retry_s + ORPHAN_GRACE_S if grace_s is None else grace_s
    expired = rt.blobs.sweep()
    with session_scope(rt.sessions) as session:
        wanted = repo.pending_blob_keys(session)  # read before listing: a newer blob is young, so kept
    # alert thumbnails belong to no chunk: they stay until their time-to-live (read by alert evaluations)
    orphans = [key for key, age in rt.blobs.entries()
               if age > grace and key not in wanted and not key.startswith(THUMBNAIL_PREFIX)]
    for key in orphans:
        rt.blobs.delete(key)
    return expired, len(orphans)


def prune_chunk_rows(rt: Runtime) -> int:
    """Delete finished chunk rows past ``chunk_retention_s`` (0 keeps them); how many went."""
    retention = rt.settings.chunk_retention_s
    if not retention:
        return 0
    with session_scope(rt.sessions) as session:
        counts = repo.prune_chunks(session, older_than=utcnow() - timedelta(seconds=retention))
    return sum(n for per_stream in counts.values() for n in per_stream.values())


def run_once(rt: Runtime) -> Swept:
    expired, orphaned = sweep_blobs(rt)
    swept = Swept(expired, orphaned, prune_chunk_rows(rt))
    if expired or orphaned or swept.pruned_chunks:
        log.info("housekeeping: %d expired and %d orphaned frame blobs deleted, %d chunk rows pruned",
                 expired, orphaned, swept.pruned_chunks)
    return swept


class Housekeeper:
    """Calls ``run_once`` when ``housekeeping_s`` has passed; ``due()`` is cheap to call every second."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._last = time.monotonic()  # not at start: the first sweep waits one period

    def due(self) -> Swept | None:
        now = time.monotonic()
        if now - self._last < self.rt.settings.housekeeping_s:
            return None
        self._last = now
        try:
            return run_once(self.rt)
        except Exception:  # the next period tries again; ingest must go on
            log.exception("housekeeping failed")
            return None
