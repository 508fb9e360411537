"""Migration 0007 (per-stream settings, deletion keeping history) up, down and up again on both databases."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import inspect, text

from store import db


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'm.sqlite3'}"


def stream_columns(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("streams")}
    finally:
        engine.dispose()


def test_migration_0007_when_downgraded_and_upgraded_keeps_streams_and_round_trips_the_columns(url):
    db.upgrade(url, "0006")
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO streams (id, tenant_id, name, source_url, status, active, loop, stats, "
                          "created_at, updated_at) VALUES ('s1', 'default', 'cam', 'rtsp://h/x', 'live', true, false, "
                          "'{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    engine.dispose()

    db.upgrade(url, "0007")
    assert {"settings", "deleted_at"} <= stream_columns(url)
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE streams SET settings = :s"), {"s": json.dumps({"sample_fps": 4.0})})
        assert conn.execute(text("SELECT name, settings, deleted_at FROM streams")).one()[0] == "cam"
    engine.dispose()

    command.downgrade(db.alembic_config(url), "0006")
    assert not {"settings", "deleted_at"} & stream_columns(url)
    db.upgrade(url)
    assert {"settings", "deleted_at"} <= stream_columns(url)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM streams WHERE id = 's1'")).scalar() == "cam"
    engine.dispose()
