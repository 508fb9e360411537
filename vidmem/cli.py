"""The ``vidmem`` command: serve, worker, api, ingest, demo, db, keys, bench, train.

Each command builds the one Settings object (``VIDMEM_*`` variables) and passes it down.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from importlib import import_module
from pathlib import Path
from typing import Annotated, Any

import typer

from vidmem.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Ask questions about live video.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (not tests): tables, JSON and PNG.")
train_app = typer.Typer(no_args_is_help=True, help="Train the shipped models and policies.")
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")
app.add_typer(train_app, name="train")
keys_app = typer.Typer(no_args_is_help=True, help="API keys: each belongs to a tenant and sees only its rows.")
app.add_typer(keys_app, name="keys")

log = logging.getLogger("vidmem")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """The last guard for camera credentials: every log line passes ``redact_text`` before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ingest.sources import redact_text

        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:  # a traceback may quote a URL too
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info))).rstrip("\n")
        return True


def _redact_handlers() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _redact_handlers()


def setup_file_logging(path: Path, settings: Settings, level: str = "INFO") -> None:
    """Log (and send stdout and stderr) to ``path``, rotated at ``log_max_bytes``, ``log_backups`` kept."""
    from vidmem.processes import RotatingStdLog

    handler = RotatingStdLog(path, settings.log_max_bytes, settings.log_backups)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _redact_handlers()


def load_settings(**overrides: Any) -> Settings:
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    settings.ensure_dirs()
    return settings


def check_methods(settings: Settings) -> None:
    """Fail at start, not at the first chunk, when a compression spec is wrong."""
    from compression.registry import build_method

    for spec, stage in ((settings.stage1, 1), (settings.stage2, 2)):
        try:
            build_method(spec, stage=stage)
        except (ValueError, OSError) as exc:
            typer.echo(f"error: VIDMEM_STAGE{stage}={spec!r}: {exc}", err=True)
            raise typer.Exit(2) from exc


def _runtime(settings: Settings):  # type: ignore[no-untyped-def]
    from store.db import SchemaNotReady
    from workers.runtime import Runtime

    check_methods(settings)
    runtime = Runtime(settings, auto_upgrade=settings.is_embedded_db)
    try:
        runtime.engine  # noqa: B018 - upgrade (embedded) or check the schema now, not at first request
    except SchemaNotReady as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    return runtime


HostOption = Annotated[str | None, typer.Option(help="API host")]
PortOption = Annotated[int | None, typer.Option(help="API port")]


def _api_runtime(host: str | None, port: int | None):  # type: ignore[no-untyped-def]
    """Settings, a checked runtime and the Celery app that the API enqueues through."""
    from workers.app import create_celery

    setup_logging()
    settings = load_settings(api_host=host, api_port=port)
    try:
        settings.check_auth_binding()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    runtime = _runtime(settings)
    create_celery(settings)
    return runtime


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _run_api(runtime) -> None:  # type: ignore[no-untyped-def]
    import uvicorn

    from api.main import create_app, freeze_startup_heap

    settings = runtime.settings
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; turn that into an
    # exception so the caller's clean-up (stopping ingest and the worker) still runs.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    served = {"host": settings.api_host, "port": settings.api_port, "log_level": "info",
              "access_log": settings.access_log}
    if settings.api_workers == 1:
        app = create_app(runtime)
        freeze_startup_heap()
        uvicorn.run(app, **served)
        return
    # several processes: each builds its app from the settings this one passes down in the environment
    os.environ.update(settings.to_env())
    uvicorn.run("api.asgi:app", factory=True, workers=settings.api_workers, **served)


@app.command()
def serve(host: HostOption = None, port: PortOption = None) -> None:
    """API + ingest + one worker in one process tree (embedded mode by default)."""
    from vidmem.processes import AlreadyServing, ServeLock, WorkerProcess, reap_orphan_worker
    from workers.dispatch import recover_unfinished
    from workers.ingest_manager import IngestManager

    runtime = _api_runtime(host, port)
    lock = ServeLock(runtime.settings.data_dir)  # one supervisor per data directory
    try:
        lock.acquire()
    except AlreadyServing as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    reap_orphan_worker(runtime.settings.data_dir)
    worker = WorkerProcess(runtime.settings, on_restart=lambda: recover_unfinished(runtime))
    worker.start()
    manager = IngestManager(runtime)
    manager.start()
    recover_unfinished(runtime)
    try:
        _run_api(runtime)
    finally:
        manager.stop()
        worker.stop()
        lock.release()


@app.command()
def api(host: HostOption = None, port: PortOption = None) -> None:
    """Only the HTTP API (distributed mode)."""
    _run_api(_api_runtime(host, port))


@app.command()
def worker(
    loglevel: str = "INFO", hostname: str | None = None,
    log_file: Annotated[Path | None, typer.Option(help="log here, rotated (VIDMEM_LOG_MAX_BYTES)")] = None,
    queues: Annotated[str, typer.Option(
        help="work taken, comma-separated: chunks (encoding), questions (answering), alerts (standing questions "
        "and their webhooks)"
    )] = "chunks,questions,alerts",
) -> None:
    """A Celery worker that encodes chunks, answers questions and evaluates alerts (or only some: --queues)."""
    from workers.app import create_celery, parse_queues, run_worker

    try:
        queue_names = parse_queues(queues)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--queues") from exc
    settings = load_settings()
    if log_file is not None:
        setup_file_logging(log_file, settings, loglevel)
    else:
        setup_logging(loglevel)
    os.nice(settings.worker_nice)  # before any thread or pool process starts: they inherit it
    runtime = _runtime(settings).for_role("worker")
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    runtime.model  # noqa: B018 - load before announcing "ready", so the first chunk is not slow
    app = create_celery(settings)
    app.vidmem_runtime = runtime  # type: ignore[attr-defined]
    run_worker(app, loglevel=loglevel, hostname=hostname, queues=queue_names)


@app.command()
def ingest() -> None:
    """Only the ingest of registered streams (distributed mode)."""
    from workers.app import create_celery
    from workers.ingest_manager import IngestManager

    setup_logging()
    settings = load_settings()
    runtime = _runtime(settings)
    create_celery(settings)
    manager = IngestManager(runtime)
    signal.signal(signal.SIGTERM, _exit_cleanly)  # a clean stop leaves the streams to resume at the next start
    manager.start()
    try:
        manager.join()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        manager.stop()


@app.command()
def demo(
    source: Annotated[str | None, typer.Option(help="a video file or URL instead of the synthetic clip")] = None,
    question: Annotated[list[str] | None, typer.Option("--question", "-q", help="ask this (repeatable)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where the SQLite file and memory go")] = None,
    seconds: Annotated[float, typer.Option(help="length of the synthetic clip")] = 16.0,
    seed: Annotated[int, typer.Option(help="seed of the synthetic clip")] = 7,
) -> None:
    """Run a short video through the real pipeline as a live stream, ask, print the answers."""
    from vidmem.demo import run_demo

    setup_logging("WARNING")
    settings = load_settings(data_dir=data_dir)
    code = run_demo(settings, source=source, questions=question or [], seconds=seconds, seed=seed)
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the configured database to the newest schema."""
    from store.db import upgrade

    settings = load_settings()
    upgrade(settings.sqlalchemy_url, revision)
    typer.echo(f"database upgraded to {revision}")


@db_app.command("check")
def db_check() -> None:
    """Exit non-zero when the configured database is not at the newest schema."""
    from store.db import SchemaNotReady, check_schema, make_engine

    settings = load_settings()
    try:
        check_schema(make_engine(settings.sqlalchemy_url))
    except SchemaNotReady as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo("database schema is up to date")


def _key_sessions():  # type: ignore[no-untyped-def]
    """Sessions on the configured database (embedded: migrated first; otherwise it must be at head)."""
    from store.db import SchemaNotReady, make_session_factory, prepare_database

    settings = load_settings()
    try:
        engine = prepare_database(settings.sqlalchemy_url, auto_upgrade=settings.is_embedded_db)
    except SchemaNotReady as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    return make_session_factory(engine)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant whose streams and questions the key reaches")],
    name: Annotated[str, typer.Option(help="a label to tell keys apart")] = "",
) -> None:
    """Make a key and print it once: only its digest is stored, it cannot be shown again."""
    from store.db import session_scope
    from store.keys import create_key

    try:
        with session_scope(_key_sessions()) as session:
            new = create_key(session, tenant_id=tenant, name=name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"created key {new.row.id} for tenant {tenant!r}; it is shown only this once:", err=True)
    typer.echo(new.token)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None) -> None:
    """Key ids, tenants, names and dates; never a secret (the database holds none)."""
    from store.db import session_scope
    from store.keys import list_keys

    def when(value: Any) -> str:
        return value.isoformat(timespec="seconds") if value else "-"

    with session_scope(_key_sessions()) as session:
        rows = list_keys(session, tenant_id=tenant)
        typer.echo("id\ttenant\tname\tcreated\tlast used\trevoked")
        for row in rows:
            typer.echo("\t".join(
                [row.id, row.tenant_id, row.name, when(row.created_at), when(row.last_used_at), when(row.revoked_at)]
            ))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the id shown by `vidmem keys list`")]) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from store.db import session_scope
    from store.keys import revoke_key
    from store.repo import NotFound

    try:
        with session_scope(_key_sessions()) as session:
            row = revoke_key(session, key_id)
    except NotFound as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"revoked key {row.id} of tenant {row.tenant_id!r}")


def _mount(group: typer.Typer, name: str, module: str) -> None:
    """Mount ``module.cli`` as a sub-command if that module exists (benchmarks land one by one)."""
    try:
        target = import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    group.command(name, help=(target.__doc__ or "").strip().splitlines()[0] if target.__doc__ else None)(target.cli)


BENCHMARKS = {
    "compression": "bench.compression",
    "model": "bench.model",
    "ingest": "bench.ingest",
    "accuracy": "bench.accuracy",
    "stream": "bench.stream",
    "workers": "bench.workers",
    "api": "bench.api",
}
TRAINERS = {"tiny": "bench.train_tiny", "cacovid": "bench.train_cacovid", "vtm": "bench.train_vtm"}


def mount_heavy_commands(argv: list[str]) -> None:
    """Benchmarks and trainers import torch and transformers: mount them only when asked for."""
    wanted = set(argv[1:2])
    if wanted & {"bench", "--help"}:
        for name, module in BENCHMARKS.items():
            _mount(bench_app, name, module)
    if wanted & {"train", "--help"}:
        for name, module in TRAINERS.items():
            _mount(train_app, name, module)


def main() -> None:
    mount_heavy_commands(sys.argv)
    app()
