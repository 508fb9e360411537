"""After a chunk is applied: queue the evaluation of every alert of its stream that is due.

Called by ``services.apply_chunk`` once the chunk is in memory and its row applied, before its frames
blob is deleted. It never raises and never waits on an answer: it reads the stream's active alerts,
claims the due ones (compare-and-set on ``alerts.last_eval_seq``, so a redelivered chunk task queues
nothing twice), keeps a thumbnail of the chunk's last frame in the blob store for the events the
evaluations may store, and puts one task per due alert on the separate ``alerts`` queue. The cost on
the chunk's path is one query when no alert is due, and a JPEG of one frame plus one update per due
alert when some are.

An alert is due when ``every_s`` of stream time has passed since its last queued evaluation (every
chunk when ``every_s`` is None), and not within ``cooldown_s`` of stream time after it last fired.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from celery import current_app

from store import alerts as alerts_repo
from store import repo
from store.db import session_scope
from store.models import Alert
from workers.runtime import Runtime
from workers.thumbnails import jpeg_thumbnail

log = logging.getLogger(__name__)

EVALUATE_TASK = "vidmem.alerts.evaluate"
DELIVER_TASK = "vidmem.alerts.deliver"
THUMBNAIL_PREFIX = "alert-thumb-"
TIME_SLACK_S = 1e-6  # chunk boundaries are float sums: 3 x 2.0 s must count as 6 s


def thumbnail_key(stream_id: str, seq: int) -> str:
    """The blob key of a chunk's thumbnail; housekeeping leaves these to their time-to-live."""
    return f"{THUMBNAIL_PREFIX}{stream_id}-{seq}"


def is_due(alert: Alert, seq: int, t_end: float) -> bool:
    """Whether chunk ``seq`` ending at ``t_end`` (stream seconds) should be evaluated for ``alert``."""
    if alert.last_eval_seq is not None and seq <= alert.last_eval_seq:
        return False  # this chunk, or a later one, already had its evaluation
    if alert.last_fired_t is not None and alert.last_fired_t <= t_end < alert.last_fired_t + alert.cooldown_s:
        return False
    if alert.every_s is None or alert.last_eval_t is None or t_end < alert.last_eval_t:  # time went back: restart
        return True
    return t_end - alert.last_eval_t >= alert.every_s - TIME_SLACK_S


@dataclass(frozen=True)
class Due:
    alert_id: str
    seq: int
    t_start: float
    t_end: float


def after_chunk_applied(rt: Runtime, stream_id: str, seq: int, blob: bytes) -> int:
    """Queue the due alerts' evaluations for chunk ``seq``; how many were queued. Never raises."""
    try:
        return _schedule(rt, stream_id, seq, blob)
    except Exception:  # alerts must never fail or hold up a chunk
        log.exception("stream %s chunk %d: alerts not scheduled", stream_id, seq)
        return 0


def _schedule(rt: Runtime, stream_id: str, seq: int, blob: bytes) -> int:
    with session_scope(rt.sessions) as session:
        alerts = alerts_repo.active_alerts(session, stream_id=stream_id)
        if not alerts:
            return 0
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=seq)
        t_start, t_end = chunk.t_start, chunk.t_end
        due = [a for a in alerts if is_due(a, seq, t_end)]
        if not due:
            return 0
        _keep_thumbnail(rt, stream_id, seq, blob)  # before the claims commit: an evaluation may read it at once
        claimed = [Due(a.id, seq, t_start, t_end) for a in due
                   if alerts_repo.claim_evaluation(session, alert_id=a.id, seq=seq, t_end=t_end,
                                                   previous_seq=a.last_eval_seq)]
    for item in claimed:  # after the commit: the task must find the claim
        current_app.send_task(EVALUATE_TASK, args=[item.alert_id, item.seq, item.t_start, item.t_end])
    if claimed:
        log.info("stream %s chunk %d: %d alert evaluations queued", stream_id, seq, len(claimed))
    return len(claimed)


def _keep_thumbnail(rt: Runtime, stream_id: str, seq: int, blob: bytes) -> None:
    """A JPEG of the chunk's last frame, under ``thumbnail_key``; an event without one is still an event."""
    try:
        with np.load(io.BytesIO(blob)) as npz:
            images = npz["images"]
        rt.blobs.put(thumbnail_key(stream_id, seq), jpeg_thumbnail(images[-1]))
    except Exception:
        log.warning("stream %s chunk %d: no thumbnail for alert events", stream_id, seq, exc_info=True)
