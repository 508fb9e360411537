"""Migrations create the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from store import db
from store.models import Base


def pending_diff(url: str) -> list:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        # full-text search objects are the migrations' alone (store.db.modelled)
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": db.modelled})
        return compare_metadata(context, Base.metadata)


def test_upgrade_when_sqlite_is_empty_reaches_head_with_no_pending_diff(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"

    db.upgrade(url)

    assert db.current_revision(db.make_engine(url)) == db.head_revision()
    assert pending_diff(url) == [], "models and migrations disagree"


def test_upgrade_when_postgresql_is_empty_reaches_head_with_no_pending_diff(postgres_url):
    db.upgrade(postgres_url)

    assert db.current_revision(db.make_engine(postgres_url)) == db.head_revision()
    assert pending_diff(postgres_url) == [], "models and migrations disagree"


def test_check_schema_when_database_is_not_migrated_names_the_upgrade_command(postgres_url):
    engine = db.make_engine(postgres_url)

    with pytest.raises(db.SchemaNotReady, match="vidmem db upgrade"):
        db.check_schema(engine)


def test_prepare_database_when_embedded_upgrades_on_start(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'vidmem.sqlite3'}"

    engine = db.prepare_database(url, auto_upgrade=True)

    assert db.current_revision(engine) == db.head_revision()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_every_migration_when_downgraded_to_base_and_upgraded_again_leaves_no_pending_diff(database, tmp_path, request):
    url = request.getfixturevalue("postgres_url") if database == "postgres" else f"sqlite:///{tmp_path / 'm.sqlite3'}"
    config = db.alembic_config(url)
    revisions = [rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()][::-1]
    db.upgrade(url)

    for previous in reversed(["base", *revisions[:-1]]):  # one step down at a time: each downgrade() runs
        command.downgrade(config, previous)
        assert db.current_revision(db.make_engine(url)) == (None if previous == "base" else previous)
    db.upgrade(url)

    assert db.current_revision(db.make_engine(url)) == db.head_revision()
    assert pending_diff(url) == [], "a downgrade left something behind that the upgrade did not recreate"


def test_processes_starting_together_on_a_fresh_sqlite_file_all_find_it_at_head(tmp_path):
    # given four processes of one embedded deployment (api, ingest, two workers) started at once
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    code = "import sys; from store.db import prepare_database; prepare_database(sys.argv[1], auto_upgrade=True)"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    # then each upgrades or waits for the one that does, and none fails ("table ... already exists")
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert db.current_revision(db.make_engine(url)) == db.head_revision()


def test_read_session_when_on_postgresql_leaves_no_transaction_open(postgres_url):
    engine = db.make_engine(postgres_url)

    def open_after_a_read(factory) -> bool:  # type: ignore[no-untyped-def]
        with db.session_scope(factory) as session:
            session.execute(text("SELECT 1"))
            status = session.connection().connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
            return status != psycopg.pq.TransactionStatus.IDLE

    assert not open_after_a_read(db.make_read_session_factory(engine)), "BEGIN and COMMIT would cost a round trip each"
    assert open_after_a_read(db.make_session_factory(engine)), "sessions that write still run in a transaction"


def _kill_other_backends(url: str) -> None:
    with db.make_engine(url).connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()"))


def test_pool_when_idle_connections_died_pings_and_reconnects(postgres_url, monkeypatch):
    engine = db.make_engine(postgres_url, pool_size=2)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    _kill_other_backends(postgres_url)  # the server restarted, say: the pooled connection is dead
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)

    with engine.connect() as conn:
        answer = conn.execute(text("SELECT 1")).scalar()

    assert answer == 1, "the dead connection failed its ping and was replaced"


def test_pool_when_a_recent_connection_died_fails_one_request_then_reconnects(postgres_url, monkeypatch):
    engine = db.make_engine(postgres_url, pool_size=2)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)  # no ping: the connection was used just now
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    _kill_other_backends(postgres_url)

    with pytest.raises(OperationalError), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    with engine.connect() as conn:
        answer = conn.execute(text("SELECT 1")).scalar()

    assert answer == 1, "the failure invalidated the pool; the next checkout connected anew"
