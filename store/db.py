"""Engines, sessions and the schema check. Nothing here runs at import time."""

from __future__ import annotations

import fcntl
import functools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
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
        connect_args = {"check_same_thread": False, "timeout": busy_timeout_s, "factory": QueuedWritesConnection}
        engine = create_engine(url, connect_args=connect_args, **pool)
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, busy_ms=int(busy_timeout_s * 1000)))
        return engine
    engine = create_engine(url, **pool)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", functools.partial(_ping_if_idle, engine.dialect))
    return engine


PING_AFTER_IDLE_S = 1.0
"""A pooled PostgreSQL connection idle this long is pinged before use; one used more recently is not."""


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dialect: Any, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """SQLAlchemy's pessimistic disconnect handling (a ping at checkout, ``pool_pre_ping``), for idle connections only.

    The ping is a round trip, and a request checks out a connection once or twice: under load it cost
    a third of a history page's round trips. A connection returned less than ``PING_AFTER_IDLE_S`` ago
    is taken as alive; one that died meanwhile (the server restarted) fails its request, and the error
    invalidates the pool, so the next checkouts reconnect. A failed ping makes the pool connect anew
    (``DisconnectionError``; the pool retries).
    """
    if time.monotonic() - record.info.get("checked_in", float("-inf")) < PING_AFTER_IDLE_S:
        return
    try:
        dialect.do_ping(dbapi_connection)
    except dialect.loaded_dbapi.Error as exc:
        raise DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc


class WriteQueue:
    """The writers of one SQLite file take turns here, across this process's threads and across processes.

    SQLite lets one transaction write at a time, and a connection that finds the lock taken polls for it,
    sleeping 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries (its busy handler): under
    contention a write that needs a millisecond waits tens or hundreds of them (POST question on three
    API processes at 200/s: p99 1.2 s). Here a transaction's first write statement waits first on a
    thread lock (handed over by the kernel the moment it is free) and then on an flock of a file beside the
    database (polled every half millisecond), and commit or rollback lets the next one in. SQLite's own
    lock still guards correctness; this only orders the queue. Waits end after the connection's busy
    timeout with SQLite's own error.
    """

    POLL_S = 0.0005

    def __init__(self, path: Path) -> None:
        self._path = path
        self._threads = threading.Lock()  # not an RLock: a commit may run on another thread than the write
        self._file: Any = None
        self._pid = 0

    def acquire(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if not self._threads.acquire(timeout=max(0.0, timeout_s)):
            raise sqlite3.OperationalError("database is locked (waited for this process's writers)")
        try:
            if self._pid != os.getpid():  # first use, or a forked child: its own open file, its own lock
                self._file, self._pid = open(self._path, "a"), os.getpid()  # noqa: SIM115 - held for the process
            while True:
                try:
                    fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise sqlite3.OperationalError(
                            "database is locked (waited for other processes' writers)") from None
                    time.sleep(self.POLL_S)
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._threads.release()


_WRITE_QUEUES: dict[str, WriteQueue] = {}
_WRITE_QUEUES_LOCK = threading.Lock()
_WRITE_STATEMENT = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


def write_queue(database: str) -> WriteQueue | None:
    """The one queue of a database file in this process (every engine on it shares it); None in memory."""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    path = os.path.realpath(database)
    with _WRITE_QUEUES_LOCK:
        queue = _WRITE_QUEUES.get(path)
        if queue is None:
            queue = _WRITE_QUEUES[path] = WriteQueue(Path(path + ".write-lock"))
        return queue


class QueuedWritesConnection(sqlite3.Connection):
    """A sqlite3 connection whose transactions queue in ``WriteQueue`` before their first write statement."""

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._queue = write_queue(os.fspath(database))
        self._timeout_s = float(kwargs.get("timeout", 5.0))
        self._holding = False

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or QueuedWritesCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().execute(sql, parameters)  # the C shortcut would bypass ``cursor``

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().executemany(sql, seq_of_parameters)

    def before_statement(self, sql: str) -> None:
        if self._queue is not None and not self._holding and _WRITE_STATEMENT.match(sql):
            self._queue.acquire(self._timeout_s)
            self._holding = True

    def after_statement(self) -> None:
        if self._holding and not self.in_transaction:  # autocommit, or the statement failed before BEGIN
            self._leave()

    def _leave(self) -> None:
        if self._holding:
            self._holding = False
            self._queue.release()  # type: ignore[union-attr]

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._leave()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._leave()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._leave()


class QueuedWritesCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        self.connection.before_statement(sql)  # type: ignore[attr-defined]
        try:
            return super().execute(sql, parameters)
        finally:
            self.connection.after_statement()  # type: ignore[attr-defined]

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:  # type: ignore[override]
        self.connection.before_statement(sql)  # type: ignore[attr-defined]
        try:
            return super().executemany(sql, seq_of_parameters)
        finally:
            self.connection.after_statement()  # type: ignore[attr-defined]


def _sqlite_pragmas(dbapi_connection, _record, *, busy_ms: int) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def autocommit(engine: Engine) -> Engine:
    """``engine``'s pool, each statement its own transaction on PostgreSQL: for reads that need no transaction
    around them (a key check, a page of history) and single-statement writes (a question queued).

    A one-query read is one round trip instead of three (BEGIN, the query, COMMIT), and each round trip
    costs the API and the server CPU. Statements on such a connection may see different snapshots. On
    SQLite it is ``engine`` itself: the driver begins a transaction only before a write, and commit ends it.
    """
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def make_read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for reads that need no transaction around them, on ``autocommit(engine)``."""
    return make_session_factory(autocommit(engine))


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
