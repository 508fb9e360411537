"""API keys for tests that call the HTTP API: every request for tenant data needs one (issue 18)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from store import keys
from store.db import make_session_factory, prepare_database, session_scope
from store.models import DEFAULT_TENANT
from vidmem.settings import Settings


def new_key(sessions: sessionmaker[Session], tenant: str = DEFAULT_TENANT, name: str = "test") -> str:
    """A fresh key of ``tenant`` (the default tenant: the one rows made through ``store.repo`` belong to)."""
    with session_scope(sessions) as session:
        return keys.create_key(session, tenant_id=tenant, name=name).token


def key_for_settings(settings: Settings, tenant: str = DEFAULT_TENANT) -> str:
    """A key in the database ``settings`` name, for a ``vidmem serve``/``api`` process (embedded: migrated first)."""
    engine = prepare_database(settings.sqlalchemy_url, auto_upgrade=settings.is_embedded_db)
    try:
        return new_key(make_session_factory(engine), tenant)
    finally:
        engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def authorise(client: Any, runtime: Any, tenant: str = DEFAULT_TENANT) -> str:
    """Make ``client`` (a TestClient or httpx client) send a new key of ``tenant`` with every request."""
    key = new_key(runtime.sessions, tenant)
    client.headers.update(bearer(key))
    return key
