"""Operational checks shared by ``/readyz`` and ``/metrics``: database, broker, queue depths, live workers.

Everything is read at call time from the database and the broker, never from counters inside one
process, so the answers are the same whichever process serves them (``vidmem serve``, or
``vidmem api`` beside separate ingest and worker hosts). Each call is bounded: a broker that does
not answer within ``BROKER_TIMEOUT_S`` counts as down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from store import repo
from store.db import session_scope
from store.models import utcnow
from vidmem.settings import Settings
from workers.app import DEFAULT_QUEUES, broker_options
from workers.runtime import Runtime

BROKER_TIMEOUT_S = 1.0
KOMBU_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport keeps priority p > 0 of queue q in list q + SEP + p
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)


class BrokerDown(RuntimeError):
    """The broker cannot be reached or read."""


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


def check_database(rt: Runtime) -> Check:
    try:
        with session_scope(rt.sessions) as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return Check(False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    return Check(True, rt.engine.dialect.name)


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting on each queue of vidmem; BrokerDown when the broker is away."""
    if settings.embedded_broker:
        return _folder_depths(Path(broker_options(settings)[1]["data_folder_in"]))
    return _redis_depths(settings.broker_url)


def _folder_depths(folder: Path) -> dict[str, int]:
    """kombu's filesystem transport: one ``<time>_<uuid>.<queue>.msg`` file per waiting message."""
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise BrokerDown(f"broker folder {folder} is missing or not writable")
    depths = dict.fromkeys(DEFAULT_QUEUES, 0)
    for name in os.listdir(folder):
        queue = name.partition(".")[2].removesuffix(".msg")
        if queue in depths and name.endswith(".msg"):
            depths[queue] += 1
    return depths


def _redis_depths(url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=BROKER_TIMEOUT_S, socket_timeout=BROKER_TIMEOUT_S)
    try:
        with client.pipeline() as pipe:
            for queue in DEFAULT_QUEUES:
                for step in KOMBU_PRIORITY_STEPS:
                    pipe.llen(queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}")
            lengths = pipe.execute()
    except redis.RedisError as exc:
        raise BrokerDown(f"{type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    per = len(KOMBU_PRIORITY_STEPS)
    return {queue: int(sum(lengths[i * per:(i + 1) * per])) for i, queue in enumerate(DEFAULT_QUEUES)}


def check_broker(settings: Settings) -> Check:
    try:
        depths = queue_depths(settings)
    except BrokerDown as exc:
        return Check(False, str(exc))
    kind = "embedded" if settings.embedded_broker else "redis"
    return Check(True, f"{kind}; queued: " + ", ".join(f"{q} {n}" for q, n in depths.items()))


def live_workers(rt: Runtime) -> int:
    """Worker processes whose heartbeat is younger than ``worker_dead_after_s``."""
    since = utcnow() - timedelta(seconds=rt.settings.worker_dead_after_s)
    with session_scope(rt.sessions) as session:
        return len(repo.live_worker_ids(session, since=since))


def check_workers(rt: Runtime) -> Check:
    try:
        n = live_workers(rt)
    except Exception as exc:
        return Check(False, f"heartbeats unreadable: {type(exc).__name__}")
    if n == 0:
        return Check(False, f"no worker heartbeat in the last {rt.settings.worker_dead_after_s:g} s")
    return Check(True, f"{n} live worker(s)")


def readiness(rt: Runtime) -> dict[str, Check]:
    """Database, broker, workers: what must work for a question to be answered and a chunk applied."""
    database = check_database(rt)
    workers = check_workers(rt) if database.ok else Check(False, "database down: heartbeats unknown")
    return {"database": database, "broker": check_broker(rt.settings), "workers": workers}
