"""Migrations create the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

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
