"""Engines, sessions and the schema check. Nothing here runs at import time."""

from __future__ import annotations

import fcntl
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class SchemaNotReady(RuntimeError):
    """The database is not at the schema this code needs."""


def make_engine(url: str, *, busy_timeout_s: float = 30.0, **pool: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout since API and worker share it.

    ``busy_timeout_s`` is how long a SQLite connection waits for another writer's lock (the API
    uses a short one, so a locked database is answered 503 rather than after half a minute).

    ``pool`` (pool_size, max_overflow, pool_timeout) sizes the connection pool: each role (API,
    ingest, worker) has its own engine, so a flood of API requests cannot take ingest's connections.
    """
    if url.startswith("sqlite"):
        connect_args = {"check_same_thread": False, "timeout": busy_timeout_s}
        engine = create_engine(url, connect_args=connect_args, **pool)
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, busy_ms=int(busy_timeout_s * 1000)))
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def _sqlite_pragmas(dbapi_connection, _record, *, busy_ms: int) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Refuse to run on a database that is not migrated to head."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaNotReady(
            f"database schema is at {current or 'nothing (empty database)'}, this vidmem needs {head}: "
            "run `vidmem db upgrade` first"
        )


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Held while an embedded SQLite file is migrated: the processes of one deployment (api, ingest, workers)
    may start together on a fresh file; one migrates, the others wait and then find it at head (without the
    lock: "table ... already exists"). Other URLs need none (PostgreSQL is migrated by `vidmem db upgrade`)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    database = Path(url.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".migrate-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prepare_database(url: str, *, auto_upgrade: bool, **pool: Any) -> Engine:
    """The engine for ``url``, upgraded first when ``auto_upgrade`` (embedded SQLite), else checked."""
    if auto_upgrade:
        with _migration_lock(url):
            upgrade(url)
    engine = make_engine(url, **pool)
    check_schema(engine)
    return engine


MODEL_LESS_PREFIX = "questions_fts"
"""Schema objects made by migrations alone (full-text search: SQLite's FTS5 tables, PostgreSQL's stored tsvector
column and its GIN index)."""


def modelled(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    """Alembic ``include_name``: autogenerate compares everything but the full-text search objects.

    They are database-specific (an FTS5 virtual table and its shadow tables; a generated tsvector column
    and its GIN index), so the models cannot describe them; migrations 0005 and 0009 create them.
    """
    return not (type_ in ("table", "index", "column") and name is not None and name.startswith(MODEL_LESS_PREFIX))
