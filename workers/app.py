"""The Celery application, built from settings (never at import time).

Embedded mode uses kombu's filesystem transport under ``data_dir/broker``: no server, survives
restarts, shared by the API process and the worker process. Distributed mode uses Redis.
Tasks are acked late, rejected (requeued) when their worker dies, prefetched one at a time, and
time-limited; their outcome lives in the database, so results are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from vidmem.settings import Settings

CHUNK_QUEUE = "vidmem.chunks"
QUESTION_QUEUE = "vidmem.questions"
ALERT_QUEUE = "vidmem.alerts"  # standing questions and their webhooks (workers.alert_tasks)


def broker_options(settings: Settings) -> tuple[str, dict]:
    if not settings.embedded_broker:
        return settings.broker_url, {"visibility_timeout": settings.task_time_limit_s * 2}
    folder = settings.data_dir / "broker"
    for sub in ("queue", "control", "processed"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "processed_folder": str(folder / "processed"),
        "store_processed": False,
    }
    return "filesystem://", options


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured for ``settings``; the settings ride along as ``app.vidmem_settings``."""
    url, transport_options = broker_options(settings)
    app = Celery("vidmem", broker=url, include=["workers.tasks", "workers.alert_tasks"])
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 30),
        task_routes={
            "vidmem.chunks.*": {"queue": CHUNK_QUEUE},
            "vidmem.questions.*": {"queue": QUESTION_QUEUE},
            "vidmem.alerts.*": {"queue": ALERT_QUEUE},
        },
        worker_hijack_root_logger=False,
        worker_enable_remote_control=not settings.embedded_broker,
    )
    app.vidmem_settings = settings  # type: ignore[attr-defined]
    app.set_default()
    return app


QUEUE_NAMES = {"chunks": CHUNK_QUEUE, "questions": QUESTION_QUEUE, "alerts": ALERT_QUEUE}
DEFAULT_QUEUES = (CHUNK_QUEUE, QUESTION_QUEUE, ALERT_QUEUE)
"""What a worker takes unless told otherwise (``vidmem worker --queues``), the embedded one included."""


def parse_queues(spec: str) -> list[str]:
    """``chunks,questions,alerts`` (or the full queue names) to queue names; unknown names are refused."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    queues = [QUEUE_NAMES.get(name, name) for name in names]
    unknown = [name for name in queues if name not in QUEUE_NAMES.values()]
    if unknown or not queues:
        raise ValueError(f"unknown queues {unknown or spec!r}: use a comma-separated list of {sorted(QUEUE_NAMES)}")
    return list(dict.fromkeys(queues))


def worker_argv(
    settings: Settings, *, loglevel: str = "INFO", hostname: str | None = None,
    queues: Sequence[str] = DEFAULT_QUEUES,
) -> list[str]:
    """Celery's command line: a solo pool, or threads when ``worker_concurrency`` > 1.

    Threads (not processes) so that concurrent chunk tasks of different streams share the model
    and its encode batches; a stream's chain never runs two of its chunks at once.
    """
    n = settings.worker_concurrency
    argv = [
        "worker", "--pool=solo" if n == 1 else "--pool=threads", f"--concurrency={n}", f"--loglevel={loglevel}",
        "--without-gossip", "--without-mingle", "--without-heartbeat", f"--queues={','.join(queues)}",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    return argv


def run_worker(
    app: Celery, *, loglevel: str = "INFO", hostname: str | None = None,
    queues: Sequence[str] = DEFAULT_QUEUES,
) -> None:
    """Run a worker on ``queues`` in this process until it is told to stop (``worker_argv``).

    Its heartbeat and the recovery check run in two threads of this process for as long as
    the worker runs (``workers.heartbeat``); a clean stop removes its heartbeat row.
    """
    from workers.heartbeat import Heartbeat
    from workers.tasks import runtime_of

    argv = worker_argv(app.vidmem_settings, loglevel=loglevel, hostname=hostname, queues=queues)  # type: ignore[attr-defined]
    heartbeat = Heartbeat(runtime_of(app.tasks["vidmem.chunks.process"]), queues)
    heartbeat.start()
    try:
        app.worker_main(argv=argv)
    finally:
        heartbeat.stop()
